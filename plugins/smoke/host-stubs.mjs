// Stand-ins for hookd's host imports when smoke.test.mjs runs guests in Node through jco:
// `hookd:plugin/host` (collects log lines), `hookd:plugin/signing-key` (HMAC with a fixed test
// key) and the type-only `hookd:plugin/types`.
import { createHmac } from 'node:crypto';

export const logs = [];
export const TEST_KEY = Buffer.from('smoke-test-secret');

export function log(level, message) {
  logs.push(`${level}: ${message}`);
}

export function mac(algorithm, data) {
  const hash = algorithm === 'hmac-sha256' ? 'sha256' : 'sha512';
  return new Uint8Array(createHmac(hash, TEST_KEY).update(data).digest());
}
