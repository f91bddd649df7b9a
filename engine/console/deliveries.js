// Deliveries: the filtered log with cursor paging, and one delivery with its event, every
// attempt (request as sent, response, latency, error, plugin logs), retry and replay.

import { get, post } from './api.js';
import { h, clear, time, badge, facts, table, field, toast, errorBox, json, dialog } from './dom.js';
import { go, href } from './nav.js';

const STATUSES = ['', 'pending', 'in_flight', 'delivered', 'failed', 'filtered'];
const FILTERS = ['webhook_id', 'status', 'event_type', 'channel', 'after', 'before'];

export async function render(main, route) {
  if (route.parts[1]) return renderOne(main, route.parts[1]);
  return renderList(main, route.params);
}

/** A datetime-local value as RFC 3339 (UTC), or '' when empty. */
function toRfc3339(local) {
  if (!local) return '';
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

/** An RFC 3339 time as a datetime-local value. */
function toLocal(text) {
  if (!text) return '';
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  // Seconds only when there are some, so a filter from the hash round-trips unchanged.
  const seconds = d.getSeconds() || d.getMilliseconds() ? `:${pad(d.getSeconds())}` : '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}${seconds}`;
}

async function filterForm(params) {
  let webhooks = [];
  try {
    webhooks = (await get('/v1/webhooks', { limit: 250 })).data;
  } catch {
    webhooks = [];
  }
  // A filter on a webhook the list does not hold (deleted since, or past the first 250)
  // shows as its id: the select never reads "All webhooks" while the list is filtered.
  const chosen = params.get('webhook_id');
  const unlisted = chosen && !webhooks.some((w) => w.id === chosen)
    ? h('option', { value: chosen, selected: true }, `${chosen} (deleted or not listed)`)
    : null;
  const webhook = h('select', { name: 'webhook_id', id: 'filter-webhook' },
    h('option', { value: '' }, 'All webhooks'),
    unlisted,
    webhooks.map((w) => h('option', { value: w.id, selected: chosen === w.id }, w.url)));
  const status = h('select', { name: 'status', id: 'filter-status' },
    STATUSES.map((s) => h('option', { value: s, selected: (params.get('status') || '') === s }, s || 'Any status')));
  const type = h('input', { name: 'event_type', id: 'filter-type', value: params.get('event_type') || '' });
  const channel = h('input', { name: 'channel', id: 'filter-channel', value: params.get('channel') || '' });
  const after = h('input', { type: 'datetime-local', step: 1, name: 'after', id: 'filter-after', value: toLocal(params.get('after')) });
  const before = h('input', { type: 'datetime-local', step: 1, name: 'before', id: 'filter-before', value: toLocal(params.get('before')) });
  const zone = `Your time zone (${Intl.DateTimeFormat().resolvedOptions().timeZone})`;
  const form = h('form', { class: 'filters', id: 'delivery-filters', role: 'search' },
    field('Webhook', webhook), field('Status', status), field('Event type', type),
    field('Channel', channel), field('Created after', after, zone), field('Created before', before, zone),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'apply-filters' }, 'Filter'),
      h('a', { class: 'button secondary', href: '#/deliveries' }, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go('deliveries', {
      webhook_id: webhook.value, status: status.value, event_type: type.value.trim(),
      channel: channel.value.trim(), after: toRfc3339(after.value), before: toRfc3339(before.value),
    });
  });
  return form;
}

async function renderList(main, params) {
  main.append(h('h1', {}, 'Deliveries'), await filterForm(params));
  if (params.get('channel')) {
    main.append(h('p', { id: 'channel-stats' },
      h('a', { href: href('stats', { channel: params.get('channel') }) }, 'Statistics of this channel')));
  }
  const filters = {};
  for (const k of FILTERS) if (params.get(k)) filters[k] = params.get(k);
  const body = h('tbody', {});
  const more = h('button', { type: 'button', id: 'more-deliveries', hidden: true }, 'Load more');
  const status = h('p', { class: 'muted', 'aria-live': 'polite' });
  const wrap = table('Deliveries', ['Created', 'Status', 'Event type', 'Webhook', 'Attempts', 'Last result'], []);
  wrap.querySelector('tbody').replaceWith(body);
  let iterator = null;
  let loaded = false;
  const load = async () => {
    // Past the last page there is nothing more: without an iterator the API would answer
    // the first page again.
    if (loaded && !iterator) return;
    more.disabled = true;
    try {
      const page = await get('/v1/deliveries', { ...filters, limit: 50, iterator });
      for (const d of page.data) {
        body.append(h('tr', { dataset: { delivery: d.id } },
          h('td', {}, h('a', { href: `#/deliveries/${encodeURIComponent(d.id)}` }, time(d.created_at))),
          h('td', {}, badge(d.status)),
          h('td', {}, d.event_type),
          h('td', {}, h('code', {}, d.webhook_id)),
          h('td', {}, String(d.attempt_count)),
          h('td', {}, d.last_status_code ? `HTTP ${d.last_status_code}` : (d.last_error || '—'))));
      }
      iterator = page.done ? null : page.iterator;
      loaded = true;
      more.hidden = !iterator;
      status.textContent = body.children.length ? `${body.children.length} shown` : 'No deliveries match.';
    } catch (err) {
      status.replaceChildren(errorBox(err));
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener('click', load);
  const replayed = h('p', { id: 'replay-outcome', 'aria-live': 'polite' });
  const replayAll = h('button', { type: 'button', class: 'secondary', id: 'replay-matching', onclick: () => replayMatching(filters, replayed) },
    'Replay matching…');
  main.append(wrap, status, h('div', { class: 'actions wrap' }, more, replayAll), replayed);
  await load();
}

/** Bulk replay of the filtered deliveries: a dry-run count first, then up to 1000 per click. */
async function replayMatching(filters, outcome) {
  try {
    const count = await post('/v1/deliveries/replay', { ...filters, dry_run: true });
    const n = count.matched;
    const choice = await dialog('Replay matching deliveries?',
      h('p', {}, n === 0 ? 'No delivery matches these filters.'
        : `${n}${count.truncated ? '+' : ''} deliveries match. Each one's event is sent again to its webhook as a new delivery; ` +
          'those whose webhook is deleted or disabled, or whose event was purged, are skipped.'),
      n === 0 ? [{ label: 'Close', value: 'close' }] : [{ label: 'Replay', value: 'replay' }, { label: 'Cancel', value: 'cancel' }]);
    if (choice !== 'replay') return;
    // 1000 per request, each going on where the previous one stopped. The API answers how
    // many of each request's deliveries matched and how many it replayed; the rest it
    // skipped.
    let matched = 0;
    let replayed = 0;
    let iterator = null;
    do {
      const r = await post('/v1/deliveries/replay', { ...filters, limit: 1000, iterator });
      matched += r.matched;
      replayed += r.replayed;
      iterator = r.iterator;
      outcome.textContent = replayOutcome(matched, replayed, Boolean(iterator));
    } while (iterator);
    toast(outcome.textContent);
  } catch (err) {
    toast(`${err.code}: ${err.message}`, 'error');
  }
}

/** "Replayed X of Y matching deliveries (Z skipped: …)", or "Replayed X deliveries" when none was skipped. */
function replayOutcome(matched, replayed, going) {
  const end = going ? '…' : '.';
  const noun = (n) => (n === 1 ? 'delivery' : 'deliveries');
  if (replayed === matched) return `Replayed ${replayed} ${noun(replayed)}${end}`;
  const skipped = matched - replayed;
  return `Replayed ${replayed} of ${matched} matching ${noun(matched)} (${skipped} skipped: ` +
    `their webhook is deleted or disabled, or their event was purged)${end}`;
}

function headersTable(headers) {
  if (!headers || !headers.length) return '—';
  return table('Request headers', ['Name', 'Value'], headers.map((hd) =>
    h('tr', {}, h('td', {}, h('code', {}, hd.name)), h('td', {}, hd.value === null || hd.value === undefined ? h('em', {}, 'hidden') : hd.value))));
}

function attemptView(a, open) {
  const req = a.request;
  return h('details', { class: 'attempt', open, dataset: { attempt: a.attempt } },
    h('summary', {}, `Attempt ${a.attempt} · `, badge(a.result), ' ',
      a.status_code ? `HTTP ${a.status_code}` : (a.error_code || ''), ` · ${a.latency_ms} ms · ${time(a.started_at)}`),
    facts([
      ['URL', a.url],
      ['Response status', a.status_code ?? '—'],
      ['Latency', `${a.latency_ms} ms`],
      ['Error', a.error_code ? `${a.error_code}${a.error_message ? `: ${a.error_message}` : ''}` : '—'],
      ['Next attempt', time(a.next_attempt_at)],
      ['Request headers', req ? headersTable(req.headers) : '—'],
      ['Request', req ? `${req.method} ${req.url}` : 'nothing was sent'],
      ['Request body', req ? h('pre', { class: 'body' }, req.body_base64 ? `(base64) ${req.body}` : req.body,
        req.body_truncated ? h('em', {}, `\n… truncated: ${req.body_bytes} bytes were sent`) : null) : '—'],
      ['Response', a.response_snippet ? h('pre', { class: 'body' }, a.response_snippet) : '—'],
      ['Plugin logs', a.plugin_logs && a.plugin_logs.length ? h('pre', {}, a.plugin_logs.join('\n')) : '—'],
    ]));
}

async function renderOne(main, id) {
  const d = await get(`/v1/deliveries/${encodeURIComponent(id)}`);
  let event = null;
  try {
    event = await get(`/v1/events/${encodeURIComponent(d.event_id)}`);
  } catch {
    event = null;
  }
  const outcome = h('div', { 'aria-live': 'polite', id: 'delivery-action-outcome' });
  main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Delivery'), badge(d.status)),
    facts([
      ['ID', h('code', {}, d.id)],
      ['Event', h('code', {}, d.event_id)],
      ['Event type', d.event_type],
      ['Channel', d.channel || '—'],
      ['Webhook', h('a', { href: `#/webhooks/${encodeURIComponent(d.webhook_id)}` }, d.webhook_id)],
      ['Attempts', String(d.attempt_count)],
      ['Created', time(d.created_at)],
      ['Next attempt', time(d.next_attempt_at)],
      ['Filtered by', d.filtered_by || '—'],
    ]),
    h('div', { class: 'actions wrap' },
      h('button', { type: 'button', id: 'refresh-delivery', onclick: () => go(`deliveries/${d.id}`) }, 'Refresh'),
      h('button', { type: 'button', id: 'retry-delivery', onclick: () => retry(d, outcome) }, 'Retry'),
      h('button', { type: 'button', id: 'replay-event', onclick: () => replay(d, outcome) }, 'Replay'),
      h('a', { class: 'button secondary', href: href('deliveries', { webhook_id: d.webhook_id }) }, 'All deliveries of this webhook')),
    outcome,
    h('h2', {}, 'Event payload'),
    event ? h('pre', { class: 'body', id: 'event-payload' }, json(event.payload)) : h('p', { class: 'muted' }, 'The event has been purged.'),
    h('h2', {}, 'Attempts'));
  const attempts = d.attempts || [];
  if (!attempts.length) main.append(h('p', { class: 'muted' }, 'No attempt yet.'));
  attempts.forEach((a, i) => main.append(attemptView(a, i === attempts.length - 1)));
}

async function retry(d, outcome) {
  try {
    await post(`/v1/deliveries/${encodeURIComponent(d.id)}/retry`);
    toast('Queued for an attempt now.');
    go(`deliveries/${d.id}`);
  } catch (err) {
    clear(outcome).append(errorBox(err));
  }
}

async function replay(d, outcome) {
  try {
    const r = await post(`/v1/events/${encodeURIComponent(d.event_id)}/replay`, { webhook_id: d.webhook_id });
    const created = (r.event && r.event.deliveries) || [];
    clear(outcome).append(h('p', {}, `Replayed as ${created.length} new deliver${created.length === 1 ? 'y' : 'ies'}: `,
      created.map((n) => h('a', { href: `#/deliveries/${encodeURIComponent(n.id)}` }, n.id))));
  } catch (err) {
    clear(outcome).append(errorBox(err));
  }
}
