// DOM helpers. Every value from the API reaches the page through text nodes or attributes
// set one by one, never as HTML, so a payload like `<img src=x onerror=alert(1)>` shows as
// text. There is no innerHTML anywhere in the console.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/x'}, 'text', child…). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** An RFC 3339 time as local date and time with its zone, like "12/5/2026, 3:48:10 PM UTC" ('—' when absent). */
export function time(text) {
  if (!text) return '—';
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? String(text) : d.toLocaleString(undefined, { timeZoneName: 'short' });
}

export function percent(rate) {
  return rate === null || rate === undefined ? '—' : `${(rate * 100).toFixed(1)} %`;
}

export function ms(value) {
  return value === null || value === undefined ? '—' : `${value} ms`;
}

/** Pretty JSON text for a <pre> (as text). */
export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** A status word as a badge. */
export function badge(word) {
  return h('span', { class: `badge badge-${String(word).replace(/[^a-z_]/g, '')}` }, word);
}

/** A definition list from [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** A table that scrolls sideways on narrow screens. */
export function table(caption, head, rows) {
  return h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption },
    h('table', {},
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
}

/** A labelled form field. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' },
    h('label', { for: id }, label), control,
    hint ? h('small', { id: hintId, class: 'muted' }, hint) : null);
}

/** A short message in the live region (and the page's error slot for failures). */
export function toast(message, kind = 'info') {
  const el = document.getElementById('toast');
  clear(el);
  el.className = `toast toast-${kind}`;
  el.append(document.createTextNode(message));
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => clear(el), 6000);
}

/** An error box for a failed call (code and message as text). */
export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' },
    err && err.code ? `${err.code}: ${err.message}` : String(err));
}

/**
 * A modal dialog (native <dialog>: focus stays inside, Escape closes). `body` is a node;
 * resolves when it closes. A dialog with a Cancel button opens with the focus on it, so
 * Enter pressed once too often cancels instead of deleting or replaying.
 */
export function dialog(title, body, buttons = [{ label: 'Close', value: 'close' }]) {
  return new Promise((resolve) => {
    const controls = buttons.map((b) =>
      h('button', { value: b.value, class: b.danger ? 'danger' : null, type: 'submit' }, b.label));
    const cancel = controls.find((c) => c.value === 'cancel');
    if (cancel) cancel.autofocus = true;
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title), body,
      h('div', { class: 'actions' }, controls));
    const el = h('dialog', { 'aria-label': title }, form);
    el.addEventListener('close', () => {
      resolve(el.returnValue || 'cancel');
      el.remove();
    });
    document.body.append(el);
    el.showModal();
    if (cancel) cancel.focus();
  });
}
