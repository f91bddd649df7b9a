// Hash routes: `#/deliveries/dlv_1?status=failed`. Filters live in the hash so a page can be
// reloaded or bookmarked; credentials never do.

/** The route of the location hash → path parts and query params. */
export function currentRoute() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, search] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search || '') };
}

/** The hash of a route; `params` is an object (empty values left out). */
export function href(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
  const text = q.toString();
  return `#/${path}${text ? `?${text}` : ''}`;
}

/** Goes to a route (renders again when it is the current one). */
export function go(path, params) {
  const target = href(path, params);
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else location.hash = target;
}
