// Plugins: the tenant's WebAssembly plugins with their last error; upload a .wasm, attach
// one to a webhook, simulate it on a sample event or a past event, delete.

import { get, call, patch, del } from './api.js';
import { h, clear, time, table, field, toast, errorBox, json, facts, badge, dialog } from './dom.js';
import { go } from './nav.js';

export async function render(main) {
  const [plugins, webhooks] = await Promise.all([
    get('/v1/plugins'),
    get('/v1/webhooks', { limit: 250 }),
  ]);
  main.append(h('h1', {}, 'Plugins'));
  if (plugins.data.length) {
    main.append(table('Plugins', ['Name', 'Version', 'Hooks', 'Updated', 'Last error', ''],
      plugins.data.map((p) => h('tr', { dataset: { plugin: p.name } },
        h('td', {}, h('code', {}, p.name)),
        h('td', {}, p.version),
        h('td', {}, p.hooks.join(', ')),
        h('td', {}, time(p.updated_at)),
        h('td', {}, p.last_error ? h('span', { class: 'error-text' }, p.last_error) : '—'),
        h('td', {}, h('button', { type: 'button', class: 'danger small', onclick: () => remove(p.name) }, 'Delete'))))));
  } else {
    main.append(h('p', { class: 'muted' }, 'No plugins yet.'));
  }
  main.append(uploadForm(), attachForm(plugins.data, webhooks.data), simulateForm(plugins.data, webhooks.data));
}

async function remove(name) {
  const choice = await dialog(`Delete plugin ${name}?`, h('p', {}, 'Webhooks using it must detach it first (on each webhook\'s page, under Plugin chain).'),
    [{ label: 'Delete', value: 'delete', danger: true }, { label: 'Cancel', value: 'cancel' }]);
  if (choice !== 'delete') return;
  try {
    await del(`/v1/plugins/${encodeURIComponent(name)}`);
    toast('Plugin deleted.');
    go('plugins');
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

function uploadForm() {
  const name = h('input', { id: 'plugin-name', required: true, autocomplete: 'off' });
  const file = h('input', { id: 'plugin-file', type: 'file', accept: '.wasm,application/wasm', required: true });
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card', id: 'upload-form' }, h('h2', {}, 'Upload a plugin'),
    field('Name', name), field('Component (.wasm)', file), out,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Upload')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const chosen = file.files[0];
    if (!chosen) return;
    try {
      const bytes = await chosen.arrayBuffer();
      const info = await call('PUT', `/v1/plugins/${encodeURIComponent(name.value.trim())}`, bytes, 'application/wasm');
      toast(`Plugin ${info.name} ${info.version} installed.`);
      go('plugins');
    } catch (err) {
      out.append(errorBox(err));
    }
  });
  return form;
}

function configInput(id) {
  return h('textarea', { id, rows: 3, class: 'mono', spellcheck: 'false' }, '{}');
}

function parseJson(text, what) {
  try {
    return JSON.parse(text || 'null');
  } catch (err) {
    throw { code: 'invalid_json', message: `${what}: ${err.message}` };
  }
}

function attachForm(plugins, webhooks) {
  const plugin = h('select', { id: 'attach-plugin' }, plugins.map((p) => h('option', { value: p.name }, p.name)));
  const webhook = h('select', { id: 'attach-webhook' }, webhooks.map((w) => h('option', { value: w.id }, w.url)));
  const config = configInput('attach-config');
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card', id: 'attach-form' }, h('h2', {}, 'Attach to a webhook'),
    h('p', { class: 'muted' }, 'Appends the plugin to the end of the webhook\'s chain; its config is checked by the plugin first.'),
    field('Plugin', plugin), field('Webhook', webhook), field('Config (JSON)', config), out,
    h('div', { class: 'actions' }, h('button', { type: 'submit', disabled: !plugins.length || !webhooks.length }, 'Attach')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    try {
      const w = webhooks.find((x) => x.id === webhook.value);
      const chain = [...w.plugins, { name: plugin.value, config: parseJson(config.value, 'config') }];
      await patch(`/v1/webhooks/${encodeURIComponent(w.id)}`, { plugins: chain });
      toast(`Attached ${plugin.value}.`);
      go(`webhooks/${w.id}`);
    } catch (err) {
      out.append(errorBox(err));
    }
  });
  return form;
}

function simulateForm(plugins, webhooks) {
  const plugin = h('select', { id: 'simulate-plugin' }, plugins.map((p) => h('option', { value: p.name }, p.name)));
  const config = configInput('simulate-config');
  const source = h('select', { id: 'simulate-source' },
    h('option', { value: 'sample' }, 'A sample event'),
    h('option', { value: 'event' }, 'A past event (by id)'));
  const type = h('input', { id: 'simulate-type', value: 'user.created' });
  const payload = h('textarea', { id: 'simulate-payload', rows: 4, class: 'mono', spellcheck: 'false' }, '{"id": 1}');
  const eventId = h('input', { id: 'simulate-event', placeholder: 'evt_…' });
  // A webhook's chain is offered for the plugins it holds.
  const chain = h('select', { id: 'simulate-webhook' });
  const chainsOf = () => {
    clear(chain);
    chain.append(h('option', { value: '' }, 'This plugin alone'),
      ...webhooks.filter((w) => w.plugins.some((p) => p.name === plugin.value))
        .map((w) => h('option', { value: w.id }, `Chain of ${w.url}`)));
  };
  chainsOf();
  plugin.addEventListener('change', chainsOf);
  const sample = h('div', {}, field('Event type', type), field('Payload (JSON)', payload));
  const past = h('div', { hidden: true }, field('Event id', eventId));
  source.addEventListener('change', () => {
    sample.hidden = source.value !== 'sample';
    past.hidden = source.value === 'sample';
  });
  const out = h('div', { 'aria-live': 'polite', id: 'simulate-outcome' });
  const form = h('form', { class: 'card', id: 'simulate-form' }, h('h2', {}, 'Simulate'),
    h('p', { class: 'muted' }, 'Runs exactly as an attempt would, and sends nothing.'),
    field('Plugin', plugin), field('Or a webhook\'s chain', chain), field('Config (JSON)', config),
    field('Event', source), sample, past, out,
    h('div', { class: 'actions' }, h('button', { type: 'submit', disabled: !plugins.length }, 'Simulate')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    try {
      const body = chain.value ? { webhook_id: chain.value } : { config: parseJson(config.value, 'config') };
      if (source.value === 'sample') {
        body.event = { type: type.value.trim(), payload: parseJson(payload.value, 'payload') };
      } else {
        body.event_id = eventId.value.trim();
      }
      const r = await call('POST', `/v1/plugins/${encodeURIComponent(plugin.value)}/simulate`, body);
      out.append(
        h('p', {}, badge(r.decision), ` in ${r.duration_ms.toFixed(2)} ms`),
        facts([
          ['Filtered by', r.filtered_by || '—'],
          ['Error', r.error_code ? `${r.error_code}: ${r.error_message}` : '—'],
          ['Request', r.request ? h('pre', { class: 'body' }, `${r.request.method} ${r.request.url}\n`,
            r.request.headers.map((x) => `${x.name}: ${x.value ?? '(secret, not shown)'}\n`).join(''), '\n', r.request.body ?? '(binary body)') : '—'],
          ['Logs', r.logs.length ? h('pre', {}, r.logs.join('\n')) : '—'],
        ]));
    } catch (err) {
      out.append(errorBox(err));
    }
  });
  return form;
}
