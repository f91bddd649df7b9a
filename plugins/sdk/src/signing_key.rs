//! MACs computed by the host with the webhook's signing secret, for sign hooks. The secret
//! never enters the plugin: the plugin passes bytes and gets the MAC back. A component that
//! calls anything here imports `hookd:plugin/signing-key`, which the host offers to sign hooks.

use crate::MacAlgorithm;
use crate::bindings::hookd::plugin::signing_key;

/// The raw MAC of `data` under the webhook's current secret.
pub fn mac(algorithm: MacAlgorithm, data: &[u8]) -> Vec<u8> {
    signing_key::mac(algorithm, data)
}

/// HMAC-SHA256 of `data` under the webhook's current secret (32 bytes).
pub fn hmac_sha256(data: &[u8]) -> Vec<u8> {
    mac(MacAlgorithm::HmacSha256, data)
}

/// HMAC-SHA512 of `data` under the webhook's current secret (64 bytes).
pub fn hmac_sha512(data: &[u8]) -> Vec<u8> {
    mac(MacAlgorithm::HmacSha512, data)
}

/// Lowercase hexadecimal encoding of `bytes`, as most signature headers want it.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}
