// Calls to hookd's API from the console. The session cookie (HttpOnly, set by
// POST /console/session) authenticates them; every call carries the console header without
// which the server ignores the cookie. No API key is ever kept by the page.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const listeners = new Set();
/** Called when a call finds the session gone (401). */
export function onSignedOut(fn) {
  listeners.add(fn);
}

/** Query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

/**
 * `method path` with an optional JSON body (or raw bytes with `contentType`); resolves to
 * the parsed answer (null when empty), rejects with ApiError.
 */
export async function call(method, path, body, contentType) {
  const headers = { 'X-Hookd-Console': '1' };
  let payload;
  if (body !== undefined) {
    if (contentType) {
      headers['Content-Type'] = contentType;
      payload = body;
    } else {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'network', `hookd did not answer: ${err.message}`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { code: 'invalid_answer', message: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const err = new ApiError(response.status, data && data.code || 'error', data && data.message || response.statusText);
    if (response.status === 401 && !path.startsWith('/console/session')) {
      for (const fn of listeners) fn(err);
    }
    throw err;
  }
  return data;
}

export const get = (path, params) => call('GET', path + query(params));
export const post = (path, body) => call('POST', path, body);
export const patch = (path, body) => call('PATCH', path, body);
export const del = (path, params) => call('DELETE', path + query(params));
