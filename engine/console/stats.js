// Statistics: per-day delivered/failed/filtered, success rate, p95 latency and top event
// types over 1, 7, 30 or 90 days, for the tenant, one webhook or one channel (webhook and
// channel do not combine: the engine counts per webhook and per channel, not per pair).

import { get } from './api.js';
import { h, percent, facts, field } from './dom.js';
import { barChart, hBarChart } from './chart.js';
import { go, href } from './nav.js';

const WINDOWS = [1, 7, 30, 90];

export async function render(main, route) {
  const days = WINDOWS.includes(Number(route.params.get('days'))) ? Number(route.params.get('days')) : 7;
  const channelName = route.params.get('channel') || '';
  const webhookId = channelName ? '' : (route.params.get('webhook') || '');
  const webhooks = (await get('/v1/webhooks', { limit: 250 })).data;
  let data;
  if (webhookId) data = await get(`/v1/webhooks/${encodeURIComponent(webhookId)}/stats`, { days });
  else data = await get('/v1/stats', { days, channel: channelName });

  const windowSelect = h('select', { id: 'stats-days' }, WINDOWS.map((d) =>
    h('option', { value: d, selected: d === days }, d === 1 ? 'Today' : `${d} days`)));
  const webhookSelect = h('select', { id: 'stats-webhook' },
    h('option', { value: '' }, 'All webhooks'),
    webhooks.map((w) => h('option', { value: w.id, selected: w.id === webhookId }, w.url)));
  const channelInput = h('input', { id: 'stats-channel', name: 'channel', value: channelName, autocomplete: 'off' });
  const change = () => go('stats', { days: windowSelect.value, webhook: webhookSelect.value, channel: channelInput.value.trim() });
  windowSelect.addEventListener('change', change);
  // A webhook chosen clears the channel, and the other way round.
  webhookSelect.addEventListener('change', () => {
    channelInput.value = '';
    change();
  });
  const filters = h('form', { class: 'filters', id: 'stats-filters', role: 'search' },
    field('Window', windowSelect), field('Webhook', webhookSelect),
    field('Channel', channelInput, 'Per webhook or per channel'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'stats-apply' }, 'Show')));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    if (channelInput.value.trim()) webhookSelect.value = '';
    change();
  });
  const incomplete = data.incomplete_days && data.incomplete_days.length
    ? h('p', { class: 'error', id: 'stats-incomplete', role: 'status' },
      `On ${data.incomplete_days.join(', ')} this tenant's events used more than 1000 channels; ` +
      'channels beyond the first 1000 of such a day are not counted per channel, so these figures may be short.')
    : null;

  const t = data.totals;
  const rows = data.series.map((d) => ({ label: d.date, short: d.date.slice(5), values: d }));
  // DOM `append` writes null as text: leave the absent parts out.
  main.append(...[
    h('h1', {}, 'Statistics'),
    filters,
    data.channel
      ? h('p', { id: 'stats-scope' }, 'Channel ', h('code', {}, data.channel), ' · ',
        h('a', { href: href('deliveries', { channel: data.channel }) }, 'its deliveries'))
      : null,
    incomplete,
    facts([
      ['Period', `${data.from} – ${data.to} (UTC)`],
      ['Events', String(t.events)],
      ['Delivered', String(t.delivered)],
      ['Failed', String(t.failed)],
      ['Filtered', String(t.filtered)],
      ['Pending', String(t.pending)],
      ['Success rate', percent(t.success_rate)],
      ['p95 latency', t.latency_p95_ms === null ? '—' : `${t.latency_p95_ms} ms`],
    ]),
    barChart({
      id: 'chart-outcomes', title: 'Deliveries per day', rows,
      series: [
        { key: 'delivered', label: 'Delivered', cls: 'ok' },
        { key: 'failed', label: 'Failed', cls: 'bad' },
        { key: 'filtered', label: 'Filtered', cls: 'neutral' },
      ],
    }),
    barChart({
      id: 'chart-success', title: 'Success rate per day', format: (v) => `${Math.round(v)} %`,
      // A day without attempts has no rate (null): "no data", not 0 %.
      rows: rows.map((r) => ({ ...r, values: { rate: r.values.success_rate === null || r.values.success_rate === undefined ? null : r.values.success_rate * 100 } })),
      series: [{ key: 'rate', label: 'Success rate', cls: 'ok' }],
    }),
    barChart({
      id: 'chart-latency', title: 'p95 latency per day (ms)', format: (v) => `${v} ms`,
      rows: rows.map((r) => ({ ...r, values: { p95: r.values.latency_p95_ms ?? null } })),
      series: [{ key: 'p95', label: 'p95 latency', cls: 'info' }],
    }),
    data.top_event_types.length
      ? hBarChart({
        id: 'chart-types', title: 'Top event types',
        rows: data.top_event_types.map((e) => ({ label: e.type, values: { count: e.count } })),
        series: { key: 'count', label: 'Events', cls: 'info' },
      })
      : h('p', { class: 'muted' }, 'No events in this period.'),
  ].filter(Boolean));
}
