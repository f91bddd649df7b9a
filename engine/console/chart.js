// Bar charts as SVG built element by element (no library, no inline style: colours come
// from classes in console.css). Each chart has a table of the same numbers for screen
// readers and keyboard users (in a <details> below it).
//
// A value of null is a missing one (a day without attempts has no p95 or success rate): it
// is drawn as a dash on the baseline and written "no data" / "—", never as 0.

import { h, s, table } from './dom.js';

const HEIGHT = 160;
const BAR = 22;
const GAP = 10;
/** The narrowest left margin (the y-axis labels are right-aligned in it). */
const MIN_LEFT = 36;
/** The width of one character of a tick label (9 px, with room to spare). */
const CHAR = 5.6;

const missing = (v) => v === null || v === undefined;

/** The width a tick label of `text` takes. */
const textWidth = (text) => Math.ceil(String(text).length * CHAR);

/**
 * A bar chart: one bar per row (`label`), stacked segments per series
 * (`{key, label, cls}`); `format` renders a value for the axis, titles and the table.
 */
export function barChart({ id, title, rows, series, format = String }) {
  const totals = rows.map((r) => series.reduce((sum, se) => sum + (Number(r.values[se.key]) || 0), 0));
  const max = Math.max(1, ...totals);
  const top = format(max);
  // The axis labels sit left of the axis: the margin fits the widest one whole.
  const left = Math.max(MIN_LEFT, textWidth(top) + 10);
  const width = left + rows.length * (BAR + GAP) + GAP;
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${width} ${HEIGHT + 20}`, role: 'img',
    'aria-label': `${title}: ${rows.length} bars`, preserveAspectRatio: 'xMinYMin meet',
  });
  svg.append(
    s('line', { x1: left - 2, y1: 0, x2: left - 2, y2: HEIGHT, class: 'axis' }),
    s('line', { x1: left - 2, y1: HEIGHT, x2: width, y2: HEIGHT, class: 'axis' }),
    s('text', { x: left - 6, y: 10, class: 'tick', 'text-anchor': 'end' }, top),
    s('text', { x: left - 6, y: HEIGHT, class: 'tick', 'text-anchor': 'end' }, '0'));
  const show = (v) => (missing(v) ? 'no data' : format(v));
  rows.forEach((row, i) => {
    const x = left + GAP + i * (BAR + GAP);
    let y = HEIGHT;
    const bar = s('g', { class: 'bar', dataset: { label: row.label } });
    const parts = series.map((se) => `${se.label} ${show(row.values[se.key])}`).join(', ');
    bar.append(s('title', {}, `${row.label}: ${parts}`));
    if (series.every((se) => missing(row.values[se.key]))) {
      bar.append(s('line', { x1: x + 4, y1: HEIGHT - 3, x2: x + BAR - 4, y2: HEIGHT - 3, class: 'no-data' }));
    }
    for (const se of series) {
      const value = Number(row.values[se.key]) || 0;
      const height = (value / max) * HEIGHT;
      if (height > 0) {
        y -= height;
        bar.append(s('rect', { x, y, width: BAR, height, class: `seg ${se.cls}` }));
      }
    }
    if (rows.length <= 31 && i % Math.ceil(rows.length / 8) === 0) {
      bar.append(s('text', { x: x + BAR / 2, y: HEIGHT + 14, class: 'tick', 'text-anchor': 'middle' }, row.short || row.label));
    }
    svg.append(bar);
  });
  const legend = h('ul', { class: 'legend' }, series.map((se) =>
    h('li', {}, s('svg', { viewBox: '0 0 10 10', class: 'swatch', 'aria-hidden': 'true' }, s('rect', { width: 10, height: 10, class: se.cls })), se.label)));
  return h('figure', { class: 'chart-box', id },
    h('figcaption', {}, title), svg, series.length > 1 ? legend : null,
    numbers(title, rows, series, (v) => (missing(v) ? '—' : format(v))));
}

const ROW = 18;
const HBAR = 12;
const HWIDTH = 480;
/** Labels longer than this are cut with "…" (the full text is in their title and the table). */
const MAX_LABEL = 40;

/**
 * A horizontal bar chart of one series: one row per item, its full label on the left and its
 * value after the bar (for names, such as event types, too long to fit under a bar).
 */
export function hBarChart({ id, title, rows, series, format = String }) {
  const values = rows.map((r) => Number(r.values[series.key]) || 0);
  const max = Math.max(1, ...values);
  const labels = rows.map((r) => (r.label.length > MAX_LABEL ? `${r.label.slice(0, MAX_LABEL - 1)}…` : r.label));
  const left = Math.max(...labels.map(textWidth), 20) + 8;
  const valueRoom = Math.max(...values.map((v) => textWidth(format(v)))) + 8;
  const span = Math.max(40, HWIDTH - left - valueRoom);
  const svg = s('svg', {
    class: 'chart hchart', viewBox: `0 0 ${HWIDTH} ${rows.length * ROW + 4}`, role: 'img',
    'aria-label': `${title}: ${rows.length} bars`, preserveAspectRatio: 'xMinYMin meet',
  });
  svg.append(s('line', { x1: left - 2, y1: 0, x2: left - 2, y2: rows.length * ROW + 4, class: 'axis' }));
  rows.forEach((row, i) => {
    const y = 2 + i * ROW;
    const length = (values[i] / max) * span;
    svg.append(s('g', { class: 'bar', dataset: { label: row.label } },
      s('title', {}, `${row.label}: ${series.label} ${format(values[i])}`),
      s('text', { x: 0, y: y + ROW / 2 + 3, class: 'tick label' }, labels[i]),
      s('rect', { x: left, y: y + (ROW - HBAR) / 2, width: length, height: HBAR, class: `seg ${series.cls}` }),
      s('text', { x: left + length + 4, y: y + ROW / 2 + 3, class: 'tick' }, format(values[i]))));
  });
  return h('figure', { class: 'chart-box', id },
    h('figcaption', {}, title), svg, numbers(title, rows, [series], format));
}

/** The chart's numbers as a table, in a <details>. */
function numbers(title, rows, series, format) {
  const t = table(title, ['', ...series.map((se) => se.label)], rows.map((r) =>
    h('tr', {}, h('th', { scope: 'row' }, r.label), series.map((se) => h('td', {}, format(r.values[se.key]))))));
  return h('details', {}, h('summary', {}, 'As a table'), t);
}
