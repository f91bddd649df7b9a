// Webhooks: the list with status and health, one webhook's page (edit, pause/resume, test
// send, secret rotation with a one-time reveal, its plugin chain with detach, delete), and the
// create form.

import { get, post, patch, del } from './api.js';
import { h, clear, time, percent, badge, facts, table, field, toast, errorBox, dialog } from './dom.js';
import { go, href } from './nav.js';

const list = (text) => text.split(',').map((t) => t.trim()).filter(Boolean);

export async function render(main, route) {
  const id = route.parts[1];
  if (id === 'new') return renderForm(main, null);
  if (id) return renderOne(main, id, route.parts[2] === 'edit');
  return renderList(main);
}

/** The health columns of a webhook (absent fields as '—'). */
function health(w) {
  const hl = w.health || {};
  return {
    rate: percent(hl.success_rate_24h),
    lastError: hl.last_error_code || '—',
    failingSince: hl.failing_since ? time(hl.failing_since) : '—',
  };
}

async function renderList(main) {
  main.append(
    h('div', { class: 'page-head' },
      h('h1', {}, 'Webhooks'),
      h('a', { class: 'button', href: '#/webhooks/new', id: 'new-webhook' }, 'New webhook')));
  const rows = [];
  let iterator = null;
  do {
    const page = await get('/v1/webhooks', { limit: 250, iterator });
    rows.push(...page.data);
    iterator = page.done ? null : page.iterator;
  } while (iterator);
  if (!rows.length) {
    main.append(h('p', { class: 'muted' }, 'No webhooks yet. Create one to start receiving events.'));
    return;
  }
  main.append(table('Webhooks', ['URL', 'Status', 'Success (24 h)', 'Last error', 'Failing since'],
    rows.map((w) => {
      const hl = health(w);
      return h('tr', { dataset: { webhook: w.id } },
        h('td', {}, h('a', { href: `#/webhooks/${encodeURIComponent(w.id)}` }, w.url),
          w.description ? h('div', { class: 'muted' }, w.description) : null),
        h('td', {}, badge(w.status)),
        h('td', {}, hl.rate),
        h('td', {}, hl.lastError),
        h('td', {}, hl.failingSince));
    })));
}

async function renderOne(main, id, editing) {
  const w = await get(`/v1/webhooks/${encodeURIComponent(id)}`);
  if (editing) return renderForm(main, w);
  const hl = w.health || {};
  main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Webhook'), badge(w.status)),
    facts([
      ['ID', h('code', {}, w.id)],
      ['URL', w.url],
      ['Description', w.description || '—'],
      ['Event types', w.event_types.join(', ')],
      ['Channels', w.channels ? w.channels.join(', ') : 'all'],
      ['Retry schedule', w.retry_schedule ? w.retry_schedule.join(', ') : 'tenant default'],
      ['Status reason', w.disabled_reason || '—'],
      ['Plugins', w.plugins.length ? w.plugins.map((p) => p.name).join(' → ') : 'none'],
      ['Success (24 h)', percent(hl.success_rate_24h)],
      ['Last success', time(hl.last_success_at)],
      ['Last failure', time(hl.last_failure_at)],
      ['Last error', hl.last_error_code || '—'],
      ['Consecutive failures', hl.consecutive_failures ?? '—'],
      ['Failing since', time(hl.failing_since)],
      ['Created', time(w.created_at)],
    ]));
  const pausable = w.status === 'active';
  const actions = h('div', { class: 'actions wrap' },
    h('a', { class: 'button', href: `#/webhooks/${encodeURIComponent(w.id)}/edit` }, 'Edit'),
    h('button', { type: 'button', id: 'toggle-status', onclick: () => setStatus(w, pausable ? 'paused' : 'active') },
      pausable ? 'Pause' : 'Resume'),
    h('button', { type: 'button', id: 'rotate-secret', onclick: () => rotate(w) }, 'Rotate secret'),
    h('a', { class: 'button', href: href('deliveries', { webhook_id: w.id }) }, 'Deliveries'),
    h('a', { class: 'button', href: href('stats', { webhook: w.id }) }, 'Statistics'),
    h('button', { type: 'button', class: 'danger', id: 'delete-webhook', onclick: () => remove(w) }, 'Delete'));
  main.append(actions);
  if (w.plugins.length) main.append(chainSection(w));
  main.append(await testSection(w));
}

/** The webhook's plugin chain in order, each step with its version and config, and Detach. */
function chainSection(w) {
  return h('section', { class: 'card', id: 'plugin-chain' }, h('h2', {}, 'Plugin chain'),
    table('Plugin chain', ['#', 'Plugin', 'Version', 'Config', ''],
      w.plugins.map((step, index) => h('tr', { dataset: { step: String(index) } },
        h('td', {}, String(index + 1)),
        h('td', {}, h('a', { href: '#/plugins' }, h('code', {}, step.name))),
        h('td', {}, step.version ? `pinned to ${step.version}` : 'current'),
        h('td', {}, configCell(step.config)),
        h('td', {}, h('button', {
          type: 'button', class: 'danger small', id: `detach-${index}`, onclick: () => detach(w, index),
        }, 'Detach'))))));
}

/** A step's config as one line of JSON, cut at 120 characters (the whole in its title). */
function configCell(config) {
  if (config === undefined || config === null) return '—';
  const text = JSON.stringify(config);
  const shown = text.length > 120 ? `${text.slice(0, 119)}…` : text;
  return h('code', { class: 'mono', title: text }, shown);
}

async function detach(w, index) {
  const step = w.plugins[index];
  const choice = await dialog(`Detach ${step.name}?`,
    h('p', {}, 'Deliveries from now on skip this step; the plugin stays uploaded.'),
    [{ label: 'Detach', value: 'detach', danger: true }, { label: 'Cancel', value: 'cancel' }]);
  if (choice !== 'detach') return;
  try {
    const chain = w.plugins.filter((_, i) => i !== index);
    await patch(`/v1/webhooks/${encodeURIComponent(w.id)}`, { plugins: chain });
    toast(`Detached ${step.name}.`);
    go(`webhooks/${w.id}`);
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

async function setStatus(w, status) {
  try {
    await patch(`/v1/webhooks/${encodeURIComponent(w.id)}`, { status });
    toast(status === 'paused' ? 'Paused: events queue up until you resume.' : 'Active again.');
    go(`webhooks/${w.id}`);
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

/** Shows a secret once, with a copy button. */
async function revealSecret(title, secret, note) {
  const value = h('input', { type: 'text', readonly: true, value: secret, id: 'secret-value', class: 'mono', 'aria-label': 'Secret' });
  const copy = h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        toast('Secret copied.');
      } catch {
        value.select();
      }
    },
  }, 'Copy');
  await dialog(title, h('div', {},
    h('p', {}, 'This is the only time the secret is shown. Store it in your receiver now.'),
    note ? h('p', { class: 'muted' }, note) : null,
    h('div', { class: 'inline' }, value, copy)), [{ label: 'Done', value: 'done' }]);
}

async function rotate(w) {
  const choice = await dialog('Rotate the secret?',
    h('p', {}, 'A new secret signs from now on; the current one keeps signing alongside it for the overlap period.'),
    [{ label: 'Rotate', value: 'rotate' }, { label: 'Cancel', value: 'cancel' }]);
  if (choice !== 'rotate') return;
  try {
    const rotated = await post(`/v1/webhooks/${encodeURIComponent(w.id)}/rotate-secret`);
    await revealSecret('New secret', rotated.secret, `The previous secret signs until ${time(rotated.previous_secret_expires_at)}.`);
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

async function remove(w) {
  const choice = await dialog('Delete this webhook?',
    h('p', {}, `${w.url} stops receiving events and its queued deliveries are dropped.`),
    [{ label: 'Delete', value: 'delete', danger: true }, { label: 'Cancel', value: 'cancel' }]);
  if (choice !== 'delete') return;
  try {
    await del(`/v1/webhooks/${encodeURIComponent(w.id)}`);
    toast('Webhook deleted.');
    go('webhooks');
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

/** Test send: pick an event type (the catalogue's example is used as payload). */
async function testSection(w) {
  let types = [];
  try {
    types = (await get('/v1/event-types')).data.map((t) => t.type);
  } catch {
    types = [];
  }
  const exact = w.event_types.filter((t) => t !== '*' && !t.endsWith('.*'));
  const choices = [...new Set([...exact, ...types.filter((t) => matches(w.event_types, t)), 'hookd.test'])];
  const select = h('select', { id: 'test-type' }, choices.map((t) => h('option', { value: t }, t)));
  const outcome = h('div', { id: 'test-outcome', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit', id: 'send-test' }, 'Send test event');
  const form = h('form', { class: 'card', id: 'test-form' },
    h('h2', {}, 'Send a test event'),
    h('p', { class: 'muted' }, 'Sent now through the plugin chain and signed; nothing is stored or retried. Declared types send their example payload.'),
    field('Event type', select), h('div', { class: 'actions' }, button), outcome);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    clear(outcome).append(h('p', { class: 'muted' }, 'Sending…'));
    try {
      const r = await post(`/v1/webhooks/${encodeURIComponent(w.id)}/test`, { type: select.value });
      clear(outcome).append(
        h('p', {}, badge(r.delivered ? 'delivered' : 'failed'), ' ',
          r.status_code ? `HTTP ${r.status_code}` : (r.error_code || ''), ` in ${r.latency_ms} ms`),
        facts([
          ['webhook-id', h('code', {}, r.webhook_id_header)],
          ['Error', r.error_code ? `${r.error_code}${r.error_message ? `: ${r.error_message}` : ''}` : '—'],
          ['Response', r.response_snippet ? h('pre', {}, r.response_snippet) : '—'],
          ['Plugin logs', r.plugin_logs && r.plugin_logs.length ? h('pre', {}, r.plugin_logs.join('\n')) : '—'],
        ]));
    } catch (err) {
      clear(outcome).append(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function matches(filters, type) {
  return filters.some((f) => f === '*' ? !type.startsWith('hookd.') : f.endsWith('.*') ? type.startsWith(f.slice(0, -1)) : f === type);
}

function renderForm(main, w) {
  const editing = Boolean(w);
  const input = (name, value, attrs = {}) => h('input', { name, id: `wh-${name}`, value: value ?? '', ...attrs });
  const url = input('url', w && w.url, { type: 'url', required: true, placeholder: 'https://example.com/webhooks' });
  const description = input('description', w && w.description);
  const types = input('event_types', w ? w.event_types.join(', ') : '*');
  const channels = input('channels', w && w.channels ? w.channels.join(', ') : '');
  const schedule = input('retry_schedule', w && w.retry_schedule ? w.retry_schedule.join(', ') : '');
  const attempts = input('max_attempts', w && w.max_attempts, { type: 'number', min: 1, max: 50 });
  const timeout = input('timeout_ms', w && w.timeout_ms, { type: 'number', min: 1, max: 300000 });
  const error = h('div', {});
  const form = h('form', { class: 'card', id: 'webhook-form' },
    h('h1', {}, editing ? 'Edit webhook' : 'New webhook'),
    field('URL', url),
    field('Description', description),
    field('Event types', types, 'Comma-separated: exact types, prefix.* or *'),
    field('Channels', channels, 'Comma-separated; empty for every channel'),
    field('Retry schedule', schedule, 'Comma-separated delays such as 10s, 5m, 1h; empty for the tenant default'),
    field('Max attempts', attempts, 'Empty for the schedule length + 1'),
    field('Timeout (ms)', timeout, 'Empty for the tenant default'),
    error,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'save-webhook' }, editing ? 'Save' : 'Create'),
      h('a', { class: 'button secondary', href: editing ? `#/webhooks/${encodeURIComponent(w.id)}` : '#/webhooks' }, 'Cancel')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(error);
    const number = (el) => (el.value === '' ? null : Number(el.value));
    const body = {
      url: url.value.trim(),
      description: description.value,
      event_types: list(types.value),
      channels: list(channels.value).length ? list(channels.value) : null,
      retry_schedule: list(schedule.value).length ? list(schedule.value) : null,
      max_attempts: number(attempts),
      timeout_ms: number(timeout),
    };
    try {
      if (editing) {
        await patch(`/v1/webhooks/${encodeURIComponent(w.id)}`, body);
        toast('Saved.');
        go(`webhooks/${w.id}`);
      } else {
        for (const k of ['channels', 'retry_schedule', 'max_attempts', 'timeout_ms']) if (body[k] === null) delete body[k];
        const created = await post('/v1/webhooks', body);
        await revealSecret('Webhook created', created.secret, 'Receivers verify signatures with it (Standard Webhooks).');
        go(`webhooks/${created.id}`);
      }
    } catch (err) {
      error.append(errorBox(err));
    }
  });
  main.append(form);
}
