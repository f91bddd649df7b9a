// Bar charts as SVG built element by element (no library, no inline style: colours come
// from classes in console.css). Each chart has a table of the same numbers for screen
// readers and keyboard users (in a <details> below it).

import { h, s, table } from './dom.js';

const HEIGHT = 160;
const BAR = 22;
const GAP = 10;
const LEFT = 36;

/**
 * A bar chart: one bar per row (`label`), stacked segments per series
 * (`{key, label, cls}`); `format` renders a value for titles and the table.
 */
export function barChart({ id, title, rows, series, format = String }) {
  const totals = rows.map((r) => series.reduce((sum, se) => sum + (Number(r.values[se.key]) || 0), 0));
  const max = Math.max(1, ...totals);
  const width = LEFT + rows.length * (BAR + GAP) + GAP;
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${width} ${HEIGHT + 20}`, role: 'img',
    'aria-label': `${title}: ${rows.length} bars`, preserveAspectRatio: 'xMinYMin meet',
  });
  svg.append(
    s('line', { x1: LEFT - 2, y1: 0, x2: LEFT - 2, y2: HEIGHT, class: 'axis' }),
    s('line', { x1: LEFT - 2, y1: HEIGHT, x2: width, y2: HEIGHT, class: 'axis' }),
    s('text', { x: LEFT - 6, y: 10, class: 'tick', 'text-anchor': 'end' }, format(max)),
    s('text', { x: LEFT - 6, y: HEIGHT, class: 'tick', 'text-anchor': 'end' }, '0'));
  rows.forEach((row, i) => {
    const x = LEFT + GAP + i * (BAR + GAP);
    let y = HEIGHT;
    const bar = s('g', { class: 'bar', dataset: { label: row.label } });
    const parts = series.map((se) => `${se.label} ${format(row.values[se.key] ?? 0)}`).join(', ');
    bar.append(s('title', {}, `${row.label}: ${parts}`));
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
  const numbers = table(title, ['', ...series.map((se) => se.label)], rows.map((r) =>
    h('tr', {}, h('th', { scope: 'row' }, r.label), series.map((se) => h('td', {}, format(r.values[se.key] ?? 0))))));
  return h('figure', { class: 'chart-box', id },
    h('figcaption', {}, title), svg, series.length > 1 ? legend : null,
    h('details', {}, h('summary', {}, 'As a table'), numbers));
}
