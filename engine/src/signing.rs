//! Standard Webhooks signatures: secrets (`whsec_<base64>`) and the `webhook-signature` value
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, space-separated during a rotation).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (Standard Webhooks asks for 24–64).
const GENERATED_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("a secret starts with `whsec_` followed by base64 of 24 to 64 random bytes")]
    MalformedSecret,
}

/// A new random secret in `whsec_<base64>` form.
pub fn generate_secret() -> String {
    let bytes: [u8; GENERATED_SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a `whsec_` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SigningError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SigningError::MalformedSecret)?;
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| SigningError::MalformedSecret)?;
    if !(24..=64).contains(&bytes.len()) {
        return Err(SigningError::MalformedSecret);
    }
    Ok(bytes)
}

/// One `v1,<base64>` signature.
pub fn sign(key: &[u8], webhook_id: &str, timestamp_secs: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per live key, newest first.
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    webhook_id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|key| sign(key, webhook_id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_decode_and_malformed_ones_do_not() {
        assert_eq!(decode_secret(&generate_secret()).unwrap().len(), 32);
        assert_eq!(
            decode_secret("whsec_short"),
            Err(SigningError::MalformedSecret)
        );
        assert_eq!(decode_secret("secret"), Err(SigningError::MalformedSecret));
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let header = signature_header([&[1u8; 24][..], &[2u8; 24][..]], "dlv_1", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
    }
}
