//! Webhook secrets at rest: the [`Keyring`] that seals a `whsec_…` secret before the store
//! writes it and opens it when the store reads it back. Owns the key format (base64 of 32
//! bytes), key ids and the sealed text; not where keys come from (`config`) nor when records
//! are re-sealed (`store`).
//!
//! A sealed secret is `hks1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`: XChaCha20-Poly1305
//! with a random 24-byte nonce per seal, and associated data naming the tenant and the webhook,
//! so a sealed value copied onto another webhook (or tenant) does not open. The key id (first
//! 4 bytes of a SHA-256 over the key, hex) picks the key among the current and previous ones,
//! and names the missing key when a data dir meets the wrong configuration.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Bytes of a secret key.
pub const SECRET_KEY_BYTES: usize = 32;
/// Prefix (and format version) of a sealed secret.
const SEALED_PREFIX: &str = "hks1:";
const NONCE_BYTES: usize = 24;
const AAD_DOMAIN: &[u8] = b"hookd webhook secret v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("a secret key is base64 of exactly 32 bytes (generate one with: hookd secret-key)")]
    MalformedKey,
    #[error("the stored secret is not in the sealed format")]
    MalformedSealed,
    #[error(
        "the secret was sealed with key id {key_id}, which is not configured (neither security.secret_key nor security.previous_secret_keys)"
    )]
    UnknownKey { key_id: String },
    #[error(
        "the secret sealed with key id {key_id} does not open: the value was altered or moved from another webhook"
    )]
    Unauthentic { key_id: String },
}

struct KeySlot {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl KeySlot {
    fn new(key: &[u8; SECRET_KEY_BYTES]) -> Self {
        KeySlot {
            id: key_id(key),
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }
}

/// The current key (seals and opens) and previous keys (open only), for key rotation.
pub struct Keyring {
    current: KeySlot,
    previous: Vec<KeySlot>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never key bytes.
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    pub fn new(current: &[u8; SECRET_KEY_BYTES], previous: &[[u8; SECRET_KEY_BYTES]]) -> Self {
        Keyring {
            current: KeySlot::new(current),
            previous: previous.iter().map(KeySlot::new).collect(),
        }
    }

    /// A keyring with a fresh random key nobody knows: for tests and benches.
    pub fn random() -> Self {
        Keyring::new(&rand::random(), &[])
    }

    /// Id of the key that seals new secrets.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `secret` for `webhook_id` of `tenant` with the current key.
    pub fn seal(&self, tenant: &str, webhook_id: &str, secret: &str) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let aad = associated_data(tenant, webhook_id);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        let mut body = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.current.id,
            STANDARD.encode(body)
        )
    }

    /// The key id a sealed value names, if it is in the sealed format.
    pub fn sealed_key_id(sealed: &str) -> Option<&str> {
        let rest = sealed.strip_prefix(SEALED_PREFIX)?;
        rest.split_once(':').map(|(id, _)| id)
    }

    /// Whether `sealed` was sealed with the current key (no re-seal needed).
    pub fn is_current(&self, sealed: &str) -> bool {
        Self::sealed_key_id(sealed) == Some(self.current.id.as_str())
    }

    /// Opens a sealed secret of `webhook_id` of `tenant`.
    pub fn open(
        &self,
        tenant: &str,
        webhook_id: &str,
        sealed: &str,
    ) -> Result<String, SecretsError> {
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretsError::MalformedSealed)?;
        let (id, body) = rest.split_once(':').ok_or(SecretsError::MalformedSealed)?;
        let slot = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKey {
                key_id: id.to_string(),
            })?;
        let body = STANDARD
            .decode(body)
            .map_err(|_| SecretsError::MalformedSealed)?;
        if body.len() < NONCE_BYTES {
            return Err(SecretsError::MalformedSealed);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let aad = associated_data(tenant, webhook_id);
        let plain = slot
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::Unauthentic {
                key_id: id.to_string(),
            })?;
        String::from_utf8(plain).map_err(|_| SecretsError::MalformedSealed)
    }
}

/// Binds a sealed value to one webhook of one tenant (NUL-separated: neither contains NUL).
fn associated_data(tenant: &str, webhook_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + tenant.len() + webhook_id.len() + 1);
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(webhook_id.as_bytes());
    aad
}

/// Header names whose value is a credential.
const SECRET_HEADERS: [&str; 5] = [
    "webhook-signature",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// Name fragments that mark a header as carrying a secret.
const SECRET_FRAGMENTS: [&str; 7] = [
    "signature",
    "secret",
    "token",
    "auth",
    "key",
    "hmac",
    "password",
];

/// Whether the value of header `name` is a secret: never shown (webhook views, the attempt
/// log, simulations) and sealed at rest when it is a webhook's static header.
pub fn is_secret_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&lower.as_str()) || SECRET_FRAGMENTS.iter().any(|f| lower.contains(f))
}

/// Short public name of a key: first 4 bytes of SHA-256 over a domain tag and the key, hex.
pub fn key_id(key: &[u8; SECRET_KEY_BYTES]) -> String {
    let digest = Sha256::new()
        .chain_update(b"hookd secret key id\0")
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..4])
}

/// Parses a key written as base64 of 32 bytes (surrounding whitespace ignored, so a key file
/// may end with a newline).
pub fn parse_key(text: &str) -> Result<[u8; SECRET_KEY_BYTES], SecretsError> {
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(SecretsError::MalformedKey)
}

/// A new random key, base64.
pub fn generate_key() -> String {
    let key: [u8; SECRET_KEY_BYTES] = rand::random();
    STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_sealed_secret_opens_only_for_its_own_webhook_and_tenant() {
        let ring = Keyring::random();
        let sealed = ring.seal("acme", "wh_1", SECRET);
        assert!(!sealed.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_eq!(ring.open("acme", "wh_1", &sealed).unwrap(), SECRET);
        let moved = SecretsError::Unauthentic {
            key_id: ring.current_id().to_string(),
        };
        assert_eq!(ring.open("acme", "wh_2", &sealed), Err(moved.clone()));
        assert_eq!(ring.open("globex", "wh_1", &sealed), Err(moved.clone()));
        // Moving the boundary between tenant and webhook id does not help either.
        let tricky = ring.seal("ab", "c", SECRET);
        assert!(ring.open("a", "bc", &tricky).is_err());
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let ring = Keyring::random();
        assert_ne!(
            ring.seal("acme", "wh_1", SECRET),
            ring.seal("acme", "wh_1", SECRET)
        );
    }

    #[test]
    fn previous_keys_open_and_the_current_key_seals() {
        let (old, new): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
        let before = Keyring::new(&old, &[]);
        let sealed = before.seal("acme", "wh_1", SECRET);
        let after = Keyring::new(&new, &[old]);
        assert!(!after.is_current(&sealed));
        assert_eq!(after.open("acme", "wh_1", &sealed).unwrap(), SECRET);
        assert!(after.is_current(&after.seal("acme", "wh_1", SECRET)));
        // Without the old key the error names the missing key id.
        let without = Keyring::new(&new, &[]);
        assert_eq!(
            without.open("acme", "wh_1", &sealed),
            Err(SecretsError::UnknownKey {
                key_id: key_id(&old)
            })
        );
    }

    #[test]
    fn altered_or_malformed_values_are_refused() {
        let ring = Keyring::random();
        let sealed = ring.seal("acme", "wh_1", SECRET);
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            ring.open("acme", "wh_1", &altered),
            Err(SecretsError::Unauthentic { .. } | SecretsError::MalformedSealed)
        ));
        assert_eq!(
            ring.open("acme", "wh_1", SECRET),
            Err(SecretsError::MalformedSealed)
        );
        let short = format!("hks1:{}:AAAA", ring.current_id());
        assert_eq!(
            ring.open("acme", "wh_1", &short),
            Err(SecretsError::MalformedSealed)
        );
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        let text = generate_key();
        assert!(parse_key(&format!("{text}\n")).is_ok());
        assert_eq!(parse_key("c2hvcnQ="), Err(SecretsError::MalformedKey));
        assert_eq!(parse_key("not base64!"), Err(SecretsError::MalformedKey));
    }

    #[test]
    fn debug_output_shows_key_ids_only() {
        let key: [u8; 32] = [7; 32];
        let text = format!("{:?}", Keyring::new(&key, &[]));
        assert!(text.contains(&key_id(&key)));
        assert!(!text.contains("7, 7"));
    }
}
