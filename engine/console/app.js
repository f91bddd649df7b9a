// The console's shell: sign-in, navigation and the hash router (#/webhooks, #/deliveries…).
// Page modules render into a fresh view inside <main>; each exports `render(view, route)`.
//
// Navigation is race-free: every route() starts a new navigation (`generation`), empties
// <main> and gives the page its own view element. A render overtaken by a later navigation
// (a second click before the first page's API calls answered) keeps writing only into its own
// view, which is no longer on the page, and then stops; it never touches the page again.

import { call, onSignedOut, ApiError } from './api.js';
import { h, clear, errorBox, field, toast } from './dom.js';
import { currentRoute } from './nav.js';
import * as webhooks from './webhooks.js';
import * as deliveries from './deliveries.js';
import * as stats from './stats.js';
import * as eventTypes from './eventtypes.js';
import * as plugins from './plugins.js';
import * as admin from './admin.js';

const TENANT_PAGES = [
  ['webhooks', 'Webhooks', webhooks],
  ['deliveries', 'Deliveries', deliveries],
  ['stats', 'Statistics', stats],
  ['event-types', 'Event types', eventTypes],
  ['plugins', 'Plugins', plugins],
];
const ADMIN_PAGES = [['admin', 'Tenants', admin]];

let session = null;
/** The current navigation; a render whose number is older has been overtaken. */
let generation = 0;

function pages() {
  return session && session.role === 'admin' ? ADMIN_PAGES : TENANT_PAGES;
}

function renderNav() {
  const nav = clear(document.getElementById('nav'));
  const who = clear(document.getElementById('who'));
  if (!session) return;
  const current = currentRoute().parts[0];
  nav.append(h('ul', {}, pages().map(([id, label]) =>
    h('li', {}, h('a', { href: `#/${id}`, 'aria-current': id === current ? 'page' : null }, label)))));
  who.append(
    h('span', {}, session.role === 'admin' ? 'Admin' : `Tenant ${session.tenant}`),
    ' ',
    h('button', { type: 'button', class: 'link', id: 'sign-out', onclick: signOut }, 'Sign out'));
}

async function route() {
  generation += 1;
  const current = generation;
  const main = document.getElementById('main');
  if (!session) {
    renderSignIn(main);
    return;
  }
  const { parts } = currentRoute();
  const page = pages().find(([id]) => id === parts[0]);
  if (!page) {
    location.replace(`#/${pages()[0][0]}`);
    return;
  }
  renderNav();
  const view = h('div', { class: 'view' });
  clear(main).append(view);
  try {
    await page[2].render(view, currentRoute());
  } catch (err) {
    if (current === generation && !(err instanceof ApiError && err.status === 401)) {
      view.append(errorBox(err));
    }
  }
  if (current !== generation) return;
  const heading = view.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
}

function renderSignIn(main, message) {
  generation += 1;
  renderNav();
  clear(main);
  const key = h('input', { type: 'password', name: 'key', id: 'key', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('div', { id: 'sign-in-error' });
  if (message) error.append(errorBox(message));
  const form = h('form', { class: 'card narrow', id: 'sign-in' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Use your tenant API key, or an admin key for the tenants view. The key is exchanged for a session cookie that lasts an hour; the page never keeps it.'),
    field('API key', key),
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(error);
    try {
      await call('POST', '/console/session', { key: key.value });
      key.value = '';
      const now = await call('GET', '/console/session');
      if (!now.signed_in) {
        error.append(errorBox('the browser did not keep the session cookie: open the console over https (or on localhost)'));
        return;
      }
      session = now;
      // Stay on the page the session ended on (when this key's role has it), else the
      // first page. Setting the hash renders it (hashchange); only an unchanged hash needs
      // an explicit route(), or the page would render twice.
      const stay = pages().some(([id]) => id === currentRoute().parts[0]);
      const target = stay ? location.hash : `#/${pages()[0][0]}`;
      if (location.hash === target) route();
      else location.hash = target;
    } catch (err) {
      key.value = '';
      error.append(errorBox(err));
      key.focus();
    }
  });
  main.append(form);
  key.focus();
}

async function signOut() {
  try {
    await call('DELETE', '/console/session');
  } finally {
    session = null;
    if (location.hash) location.hash = '';
    else route();
  }
}

onSignedOut(() => {
  if (!session) return;
  session = null;
  toast('Your session ended; sign in again.', 'error');
  renderSignIn(document.getElementById('main'));
});

async function boot() {
  try {
    const now = await call('GET', '/console/session');
    session = now.signed_in ? now : null;
  } catch {
    session = null;
  }
  window.addEventListener('hashchange', route);
  route();
}

boot();
