// Event types: the tenant's catalogue (description, JSON Schema, example payload) and the
// types seen in the last 30 days that it does not declare.

import { get } from './api.js';
import { h, json, badge } from './dom.js';

export async function render(main) {
  const catalogue = await get('/v1/event-types');
  main.append(h('h1', {}, 'Event types'));
  if (catalogue.strict) {
    main.append(h('p', {}, 'Strict: events of undeclared types, and payloads failing their schema, are refused.'));
  }
  if (!catalogue.data.length) {
    main.append(h('p', { class: 'muted' }, 'No event types declared or seen yet.'));
    return;
  }
  for (const t of catalogue.data) {
    main.append(h('section', { class: 'card', dataset: { eventType: t.type } },
      h('h2', {}, t.type, ' ', badge(t.declared ? 'declared' : 'seen')),
      t.description ? h('p', {}, t.description) : null,
      t.last_seen_day ? h('p', { class: 'muted' }, `Last seen ${t.last_seen_day}`) : null,
      t.example !== undefined && t.example !== null
        ? h('details', { open: true }, h('summary', {}, 'Example payload'), h('pre', { class: 'body' }, json(t.example)))
        : null,
      t.schema ? h('details', {}, h('summary', {}, 'JSON Schema'), h('pre', { class: 'body' }, json(t.schema))) : null));
  }
}
