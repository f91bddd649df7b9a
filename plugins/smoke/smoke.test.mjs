// Guest-side smoke test of plugins/dist/*.wasm without the hookd host: checks each
// component's imports and exports with `jco wit` (0.1.0 components, and the 0.2.0 ones that add
// `on-response`), then runs it in Node (transpiled by
// `jco transpile`, WASI from preview2-shim, hookd imports from host-stubs.mjs) and checks the
// behaviour STATUS.md documents. Node's WASI is not hookd's sandbox: limits and denials are
// the host's tests. Run after ./build.sh:
//   node --experimental-wasm-extended-const --test smoke/smoke.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { logs, TEST_KEY } from './host-stubs.mjs';

const PLUGINS = join(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = join(PLUGINS, 'dist');
const OUT = join(PLUGINS, 'target', 'smoke');
const JCO = join(PLUGINS, 'js-filter', 'node_modules', '.bin', 'jco');
const STUBS = pathToFileURL(join(PLUGINS, 'smoke', 'host-stubs.mjs')).href;

rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });
// Transpiled modules import @bytecodealliance/preview2-shim: resolve it from js-filter's deps.
symlinkSync(join(PLUGINS, 'js-filter', 'node_modules'), join(OUT, 'node_modules'));

/** The `import`/`export` names of a component's world. */
function world(name) {
  const wit = execFileSync(JCO, ['wit', join(DIST, `${name}.wasm`)], { encoding: 'utf8' });
  const names = (kind) =>
    [...wit.matchAll(new RegExp(`^  ${kind} ([^;\\s]+?)(?:;|: )`, 'gm'))].map((m) => m[1]);
  return { imports: names('import'), exports: names('export') };
}

const transpiled = new Set();
let fresh = 0;
/** A fresh instance of a component (a trap poisons an instance, as in wasmtime). */
async function instance(name) {
  const dir = join(OUT, name);
  if (!transpiled.has(name)) {
    const maps = ['host', 'signing-key', 'types'].flatMap((i) => ['-M', `hookd:plugin/${i}@0.1.0=${STUBS}`]);
    execFileSync(JCO, ['transpile', join(DIST, `${name}.wasm`), '-o', dir, '--name', 'component',
      '--no-typescript', ...maps, '-M', `evil:net/socket@0.1.0=${STUBS}`], { stdio: 'pipe' });
    transpiled.add(name);
  }
  logs.length = 0;
  return import(`${pathToFileURL(join(dir, 'component.js')).href}?instance=${fresh++}`);
}

const enc = new TextEncoder();
const dec = new TextDecoder();
function event(data, extra = {}) {
  const body = typeof data === 'string' ? data : JSON.stringify({ id: 'evt_1', type: 'invoice.paid', timestamp: '2026-01-01T00:00:00Z', data });
  return { id: 'dlv_1', eventId: 'evt_1', eventType: 'invoice.paid', tenant: 'acme', channel: undefined,
    timestamp: 1700000000000n, attemptTime: 1700000001000n, attempt: 1, url: 'https://receiver.example/hook',
    method: 'POST', contentType: 'application/json', headers: [], payload: enc.encode(body), ...extra };
}
/** The err payload of a failed call (a plugin-error `{tag, val}` or a string), or a trap's message. */
function failure(call) {
  try {
    call();
  } catch (error) {
    return error.payload ?? String(error);
  }
  assert.fail('expected the call to fail');
}
const json = (bytes) => JSON.parse(dec.decode(bytes));
const HOOKD = (names) => names.map((n) => `hookd:plugin/${n}@0.1.0`);

test('each component exports meta plus exactly its hooks', () => {
  const hooks = {
    'json-filter': ['filter'], 'js-filter': ['filter'], 'py-filter': ['filter'],
    'reshape-transform': ['transform'], 'github-signer': ['sign'], 'infinite-loop': ['filter'],
    'memory-bomb': ['filter'], trap: ['filter', 'transform', 'sign'], 'oversized-output': ['transform'],
    'header-injection': ['transform'], 'url-to-blocked': ['transform'], 'bad-import': ['filter'],
    'clock-and-random': ['transform'], 'sandbox-probe': ['transform'],
  };
  for (const [name, list] of Object.entries(hooks)) {
    // componentize-py also exports its own `exports` instance (its init function).
    const exports = world(name).exports.filter((e) => e !== 'exports');
    assert.deepEqual(exports.sort(), HOOKD(['meta', ...list]).sort(), name);
  }
  // 0.2.0 components: 0.1.0's meta (and hooks) plus `on-response` of 0.2.0, and no other
  // import than 0.1.0's host interfaces and WASI.
  const v2 = { 'body-says-ok': [], 'response-probe': ['filter'] };
  for (const [name, list] of Object.entries(v2)) {
    const { imports, exports } = world(name);
    assert.deepEqual(exports.sort(), [...HOOKD(['meta', ...list]), 'hookd:plugin/on-response@0.2.0'].sort(), name);
    assert.ok(imports.every((i) => i.startsWith('wasi:') || i.endsWith('@0.1.0')), `${name}: ${imports}`);
  }
  assert.deepEqual(world('json-filter-next').exports.sort(), HOOKD(['meta', 'filter']).sort());
  assert.deepEqual(world('wrong-world').exports, ['acme:thing/runner@1.0.0']);
  assert.ok(world('bad-import').imports.includes('evil:net/socket@0.1.0'));
  assert.ok(world('github-signer').imports.includes('hookd:plugin/signing-key@0.1.0'));
  assert.ok(!world('json-filter').imports.includes('hookd:plugin/signing-key@0.1.0'));
  assert.ok(world('sandbox-probe').imports.some((i) => i.startsWith('wasi:sockets/tcp@')));
});

test('json-filter-next drops the last allowed value (the shadow-run candidate)', async () => {
  const config = JSON.stringify({ path: 'data.kind', allowed: ['a', 'b', 'c'] });
  const m = await instance('json-filter-next');
  assert.equal(m.filter.filter(config, event({ kind: 'a' })), 'deliver');
  assert.equal(m.filter.filter(config, event({ kind: 'b' })), 'deliver');
  assert.equal(m.filter.filter(config, event({ kind: 'c' })), 'drop');
  assert.equal(m.meta.validateConfig(config), undefined);
});

/** A receiver's answer as the `on-response` hook gets it. */
function answer(status, body, headers = []) {
  const bytes = enc.encode(typeof body === 'string' ? body : JSON.stringify(body));
  return { status, headers, body: bytes, bodyTruncated: false };
}

test('body-says-ok decides from the status and the body (on-response, 0.2.0)', async () => {
  const m = await instance('body-says-ok');
  const hook = (config, response) => m.onResponse.onResponse(JSON.stringify(config), event({}), response);
  assert.deepEqual(m.meta.describe().hooks, ['on-response']);
  assert.deepEqual(hook({}, answer(500, { ok: true })), { tag: 'delivered' });
  assert.deepEqual(hook({ retry_after: 60 }, answer(200, { ok: false })), { tag: 'retry', val: 60 });
  assert.deepEqual(hook({ retry_after: 5 }, answer(200, { ok: false }, [['retry-after', '90']])), { tag: 'retry', val: 90 });
  assert.equal(hook({ fail: [422] }, answer(422, {})).tag, 'fail');
  const disabled = hook({ disable: [403] }, answer(403, { error: 'account closed' }));
  assert.equal(disabled.tag, 'disable');
  assert.match(disabled.val, /403.*account closed/);
  assert.deepEqual(hook({}, answer(200, 'not json')), { tag: 'default' });
  assert.equal(failure(() => hook({ nope: 1 }, answer(200, {}))).tag, 'invalid-config');
});

test('response-probe returns the decision its config names', async () => {
  const m = await instance('response-probe');
  const hook = (config) => m.onResponse.onResponse(JSON.stringify(config), event({}), answer(200, {}));
  assert.equal(m.filter.filter('{}', event({})), 'deliver');
  assert.deepEqual(hook({ do: 'delivered' }), { tag: 'delivered' });
  assert.deepEqual(hook({ do: 'retry', after: 5 }), { tag: 'retry', val: 5 });
  assert.deepEqual(hook({}), { tag: 'default' });
  assert.equal(hook({ do: 'fail', message: 'why' }).tag, 'fail');
  assert.equal(failure(() => hook({ do: 'error' })).tag, 'internal');
});

for (const name of ['json-filter', 'js-filter', 'py-filter']) {
  test(`${name} delivers allowed values, drops others, rejects bad input`, async () => {
    const config = JSON.stringify({ path: 'data.kind', allowed: ['a', 'b'] });
    const m = await instance(name);
    assert.deepEqual(m.meta.describe().hooks, ['filter']);
    assert.equal(m.filter.filter(config, event({ kind: 'b' })), 'deliver');
    assert.equal(m.filter.filter(config, event({ kind: 'c' })), 'drop');
    assert.equal(m.filter.filter(config, event({ items: [] })), 'drop');
    assert.equal(m.filter.filter(JSON.stringify({ path: 'data.n.1', allowed: [2] }), event({ n: [1, 2] })), 'deliver');
    assert.equal(failure(() => m.filter.filter(config, event('not json'))).tag, 'invalid-event');
    assert.equal(failure(() => m.filter.filter('{"path": 3}', event({}))).tag, 'invalid-config');
    assert.equal(m.meta.validateConfig(config), undefined);
    assert.match(failure(() => m.meta.validateConfig('{"path": "x", "allowed": []}')), /allowed/);
  });
}

test('reshape-transform redacts, flattens and renders chat messages', async () => {
  const data = { from: 'ann', to: 'bob', content: 'hi', password: 'hunter2', card: { number: '4111', exp: '12/30' } };
  let m = await instance('reshape-transform');
  const redacted = m.transform.transform('{"redact": ["password", "card.number"]}', event(data));
  assert.equal(redacted.contentType, 'application/json');
  assert.deepEqual(json(redacted.payload).data.card, { number: '[REDACTED]', exp: '12/30' });
  assert.equal(json(redacted.payload).data.password, '[REDACTED]');
  assert.deepEqual(json(m.transform.transform('{"shape": "flat"}', event(data)).payload), {
    client_id: 'acme', message_id: 'evt_1', from: 'ann', to: 'bob', timestamp: 1700000000000, type: 'invoice.paid', content: 'hi',
  });
  const chat = m.transform.transform('{"shape": "chat", "template": "{$type}: {data.content}"}', event(data));
  assert.deepEqual(json(chat.payload), { text: 'invoice.paid: hi' });
  assert.equal(m.transform.transform('{}', event(data)).payload, undefined);
  assert.equal(failure(() => m.transform.transform('{}', event('<xml/>'))).tag, 'invalid-event');
});

test('github-signer signs the payload through the host MAC', async () => {
  const m = await instance('github-signer');
  const e = event({ n: 1 });
  const expected = createHmac('sha256', TEST_KEY).update(e.payload).digest('hex');
  assert.deepEqual(m.sign.sign('', e), [['x-hub-signature-256', `sha256=${expected}`]]);
});

test('trap fixture maps each mode to its outcome', async () => {
  for (const mode of ['panic', 'unreachable', 'abort']) {
    const m = await instance('trap');
    assert.match(String(failure(() => m.filter.filter(JSON.stringify({ mode }), event({})))), /unreachable/, mode);
  }
  for (const mode of ['internal', 'retry-later', 'invalid-event', 'invalid-config']) {
    const m = await instance('trap');
    assert.deepEqual(failure(() => m.transform.transform(JSON.stringify({ mode }), event({}))), { tag: mode, val: `trap fixture: ${mode}` });
  }
  const m = await instance('trap');
  assert.equal(m.filter.filter('{"mode": "ok"}', event({})), 'deliver');
  assert.equal(m.filter.filter('{"mode": "drop"}', event({})), 'drop');
  assert.equal(m.filter.filter('{"mode": "internal", "hook": "sign"}', event({})), 'deliver');
  assert.equal(failure(() => m.sign.sign('{"mode": "internal", "hook": "sign"}', event({}))).tag, 'internal');
});

test('memory-bomb holds the configured MiB, then delivers', async () => {
  const m = await instance('memory-bomb');
  assert.equal(m.filter.filter('{"mib": 8}', event({})), 'deliver');
  assert.deepEqual(logs, ['info: held 8 MiB']);
});

test('oversized-output returns exactly the configured size', async () => {
  const m = await instance('oversized-output');
  assert.equal(m.transform.transform('', event({})).payload.length, 16 << 20);
  const small = m.transform.transform('{"bytes": 1000}', event({})).payload;
  assert.equal(small.length, 1000);
  assert.equal(json(small).pad.length, 990);
});

test('header-injection and url-to-blocked return the hostile patches verbatim', async () => {
  const h = await instance('header-injection');
  assert.deepEqual(h.transform.transform('', event({})).setHeaders, [
    ['x-injected', 'ok\r\nx-evil: 1'], ['webhook-signature', 'v1,forged'], ['content-length', '0'],
  ]);
  assert.deepEqual(h.transform.transform('{"mode": "remove-webhook-signature"}', event({})).removeHeaders, ['webhook-signature']);
  assert.deepEqual(h.transform.transform('{"mode": "valid"}', event({})).setHeaders, [['x-plugin', 'ok']]);
  const u = await instance('url-to-blocked');
  assert.equal(u.transform.transform('', event({})).url, 'http://127.0.0.1:9/x');
  assert.equal(u.transform.transform('{"url": "file:///etc/passwd"}', event({})).url, 'file:///etc/passwd');
});

test('clock-and-random and sandbox-probe report what they read', async () => {
  const c = await instance('clock-and-random');
  const report = json(c.transform.transform('', event({})).payload);
  assert.equal(report.attempt_time, 1700000001000);
  assert.equal(report.delivery_id, 'dlv_1');
  assert.match(report.random_bytes, /^[0-9a-f]{32}$/);
  const s = await instance('sandbox-probe');
  const probe = json(s.transform.transform('{"tcp": "127.0.0.1:1"}', event({})).payload);
  for (const key of ['file', 'read_dir', 'env_var', 'env_vars', 'args', 'tcp', 'dns']) {
    assert.equal(typeof probe[key].denied, 'boolean', key);
  }
  assert.equal(probe.tcp.denied, true);
});
