// The admin view (admin key): every tenant with what it owns and uses, and engine status.

import { get } from './api.js';
import { h, table, facts } from './dom.js';

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export async function render(main) {
  const [tenants, status] = await Promise.all([get('/v1/admin/tenants'), get('/v1/admin/status')]);
  main.append(
    h('h1', {}, 'Tenants'),
    facts([
      ['Version', status.version],
      ['Uptime', `${status.uptime_seconds} s`],
      ['Tenants', String(status.tenants)],
      ['Data dir', bytes(status.data_dir_bytes)],
      ['Last config reload', status.config.last_result || 'none'],
    ]),
    table('Tenants', ['Tenant', 'Webhooks', 'Plugins', 'Events stored', 'Stored', 'Pending deliveries', 'Events today', 'Events (7 days)', 'Declared event types'],
      tenants.data.map((t) => h('tr', { dataset: { tenant: t.id } },
        h('td', {}, h('code', {}, t.id)),
        h('td', {}, String(t.webhooks)),
        h('td', {}, String(t.plugins)),
        h('td', {}, String(t.events)),
        h('td', {}, bytes(t.stored_bytes)),
        h('td', {}, String(t.pending_deliveries)),
        h('td', {}, String(t.events_today)),
        h('td', {}, String(t.events_7d)),
        h('td', {}, t.declared_event_types.join(', ') || '—')))));
}
