// Statistics: per-day delivered/failed/filtered, success rate, p95 latency and top event
// types over 1, 7, 30 or 90 days, for the tenant or one webhook.

import { get } from './api.js';
import { h, percent, facts, field } from './dom.js';
import { barChart } from './chart.js';
import { go } from './nav.js';

const WINDOWS = [1, 7, 30, 90];

export async function render(main, route) {
  const days = WINDOWS.includes(Number(route.params.get('days'))) ? Number(route.params.get('days')) : 7;
  const webhookId = route.params.get('webhook') || '';
  const webhooks = (await get('/v1/webhooks', { limit: 250 })).data;
  const data = webhookId
    ? await get(`/v1/webhooks/${encodeURIComponent(webhookId)}/stats`, { days })
    : await get('/v1/stats', { days });

  const windowSelect = h('select', { id: 'stats-days' }, WINDOWS.map((d) =>
    h('option', { value: d, selected: d === days }, d === 1 ? 'Today' : `${d} days`)));
  const webhookSelect = h('select', { id: 'stats-webhook' },
    h('option', { value: '' }, 'All webhooks'),
    webhooks.map((w) => h('option', { value: w.id, selected: w.id === webhookId }, w.url)));
  const change = () => go('stats', { days: windowSelect.value, webhook: webhookSelect.value });
  windowSelect.addEventListener('change', change);
  webhookSelect.addEventListener('change', change);

  const t = data.totals;
  const rows = data.series.map((d) => ({ label: d.date, short: d.date.slice(5), values: d }));
  main.append(
    h('h1', {}, 'Statistics'),
    h('div', { class: 'filters' }, field('Window', windowSelect), field('Webhook', webhookSelect)),
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
      rows: rows.map((r) => ({ ...r, values: { rate: r.values.success_rate === null ? 0 : r.values.success_rate * 100 } })),
      series: [{ key: 'rate', label: 'Success rate', cls: 'ok' }],
    }),
    barChart({
      id: 'chart-latency', title: 'p95 latency per day (ms)', format: (v) => `${v} ms`,
      rows: rows.map((r) => ({ ...r, values: { p95: r.values.latency_p95_ms ?? 0 } })),
      series: [{ key: 'p95', label: 'p95 latency', cls: 'info' }],
    }),
    data.top_event_types.length
      ? barChart({
        id: 'chart-types', title: 'Top event types',
        rows: data.top_event_types.map((e) => ({ label: e.type, short: e.type.slice(0, 6), values: { count: e.count } })),
        series: [{ key: 'count', label: 'Events', cls: 'info' }],
      })
      : h('p', { class: 'muted' }, 'No events in this period.'));
}
