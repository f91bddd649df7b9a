// The json-filter example plugin in JavaScript: delivers an event only when the JSON value at
// a configured dot path of the payload is one of the allowed values, and drops it otherwise.
// Same config and behaviour as plugins/examples/json-filter (Rust):
//   {"path": "data.kind", "allowed": ["a", "b"]}
// Built into a component of world hookd:plugin/filter-plugin by componentize-js (see
// package.json). WIT mapping: exported interfaces are exported objects named after them
// (`filter`, `meta`), kebab-case names become camelCase, `list<u8>` is a Uint8Array, a
// `result` is returned on ok and thrown on err (a variant as `{tag, val}`).

import { log } from 'hookd:plugin/host@0.1.0';

/** A hook error: thrown, it becomes the `err` of the hook's `result`. */
function pluginError(tag, message) {
  return { tag, val: message };
}

/** Parse and check the config; throws an `invalid-config` plugin error. */
function parseConfig(config) {
  let parsed;
  try {
    parsed = JSON.parse(config);
  } catch (error) {
    throw pluginError('invalid-config', `config is not valid: ${error.message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw pluginError('invalid-config', 'config is not valid: expected an object');
  }
  for (const key of Object.keys(parsed)) {
    if (key !== 'path' && key !== 'allowed') {
      throw pluginError('invalid-config', `config is not valid: unknown field \`${key}\``);
    }
  }
  if (typeof parsed.path !== 'string') {
    throw pluginError('invalid-config', 'config is not valid: `path` must be a string');
  }
  if (parsed.path !== '' && parsed.path.split('.').some((segment) => segment === '')) {
    throw pluginError('invalid-config', `path \`${parsed.path}\` has an empty segment`);
  }
  if (!Array.isArray(parsed.allowed)) {
    throw pluginError('invalid-config', 'config is not valid: `allowed` must be an array');
  }
  if (parsed.allowed.length === 0) {
    throw pluginError('invalid-config', '`allowed` must list at least one value');
  }
  return parsed;
}

/** The value at dot path `path` in `value`, or undefined (see hookd_plugin_sdk::json). */
function lookup(value, path) {
  let current = value;
  for (const segment of path.split('.').filter((s) => s !== '')) {
    if (Array.isArray(current)) {
      current = /^[0-9]+$/.test(segment) ? current[Number(segment)] : undefined;
    } else if (current !== null && typeof current === 'object') {
      current = Object.hasOwn(current, segment) ? current[segment] : undefined;
    } else {
      return undefined;
    }
    if (current === undefined) {
      return undefined;
    }
  }
  return current;
}

/** JSON equality: same type and same value, objects and arrays compared deeply. */
function jsonEqual(a, b) {
  if (a === b) {
    return true;
  }
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) {
    return false;
  }
  if (Array.isArray(a) !== Array.isArray(b)) {
    return false;
  }
  const keysA = Object.keys(a);
  const keysB = Object.keys(b);
  return keysA.length === keysB.length && keysA.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
}

export const meta = {
  describe() {
    return { name: 'js-filter', version: '0.1.0', hooks: ['filter'] };
  },
  validateConfig(config) {
    try {
      parseConfig(config);
    } catch (error) {
      // validate-config returns result<_, string>: throw the message alone.
      throw error.val ?? String(error);
    }
  },
};

export const filter = {
  filter(config, event) {
    const parsed = parseConfig(config);
    let payload;
    try {
      payload = JSON.parse(new TextDecoder().decode(event.payload));
    } catch (error) {
      throw pluginError('invalid-event', `payload is not JSON: ${error.message}`);
    }
    const value = lookup(payload, parsed.path);
    if (value === undefined) {
      log('debug', `${parsed.path} is absent`);
      return 'drop';
    }
    if (parsed.allowed.some((allowed) => jsonEqual(allowed, value))) {
      return 'deliver';
    }
    log('debug', `${parsed.path} = ${JSON.stringify(value)} is not allowed`);
    return 'drop';
  },
};
