//! Webhook records at rest: which of their values are sealed (`secrets.rs`) and the one way both
//! backends turn a record into its stored form and back.
//!
//! Sealed, each bound to the tenant and the webhook:
//! - every signing secret (`secrets[*].sealed`; the plaintext field is never serialised);
//! - the value of every static header that carries a credential (`secrets::is_secret_header`:
//!   `Authorization`, `X-Api-Key`, …): it leaves `headers` for `sealed_headers`, bound also to
//!   the header's name, so a value moved to another header does not open.
//!
//! A record written before a value was sealed still decodes (the plaintext is where it was)
//! and is re-sealed at start-up ([`needs_reseal`]).

use crate::secrets::{Keyring, SecretsError, is_secret_header};
use crate::store::{StoreError, WebhookRecord};

/// The stored form of `webhook`: every secret with its plaintext and every credential header
/// sealed afresh with the current key; secrets read sealed are kept as they were.
pub fn stored_form(keyring: &Keyring, tenant: &str, webhook: &WebhookRecord) -> WebhookRecord {
    let mut stored = webhook.clone();
    for secret in &mut stored.secrets {
        if !secret.secret.is_empty() {
            secret.sealed = Some(keyring.seal(tenant, webhook.id.as_str(), &secret.secret));
        }
    }
    let credentials: Vec<String> = stored
        .headers
        .keys()
        .filter(|name| is_secret_header(name))
        .cloned()
        .collect();
    for name in credentials {
        if let Some(value) = stored.headers.remove(&name) {
            let sealed = keyring.seal(tenant, &header_binding(webhook, &name), &value);
            stored.sealed_headers.insert(name, sealed);
        }
    }
    stored
}

/// Opens every sealed value of a stored `webhook` in place: secrets get their plaintext,
/// credential headers go back into `headers`.
pub fn open(
    keyring: &Keyring,
    tenant: &str,
    webhook: &mut WebhookRecord,
) -> Result<(), StoreError> {
    let id = webhook.id.to_string();
    let failed = |source: SecretsError| StoreError::Secret {
        tenant: tenant.to_string(),
        webhook_id: id.clone(),
        source,
    };
    for secret in &mut webhook.secrets {
        if let Some(sealed) = &secret.sealed {
            secret.secret = keyring.open(tenant, &id, sealed).map_err(failed)?;
        }
    }
    for (name, sealed) in std::mem::take(&mut webhook.sealed_headers) {
        let value = keyring
            .open(tenant, &header_binding(webhook, &name), &sealed)
            .map_err(failed)?;
        webhook.headers.insert(name, value);
    }
    Ok(())
}

/// Whether a stored `webhook` holds a value in the clear that should be sealed, or one sealed
/// under a previous key (start-up rewrites it).
pub fn needs_reseal(keyring: &Keyring, webhook: &WebhookRecord) -> bool {
    let stale_secret = webhook.secrets.iter().any(|s| {
        s.sealed
            .as_deref()
            .is_none_or(|sealed| !keyring.is_current(sealed))
    });
    stale_secret
        || webhook.headers.keys().any(|name| is_secret_header(name))
        || webhook
            .sealed_headers
            .values()
            .any(|sealed| !keyring.is_current(sealed))
}

/// What a sealed header value is bound to besides the tenant: the webhook and the header's
/// name (NUL-separated, as neither holds NUL; a secret's binding has no NUL, so the two never
/// meet).
fn header_binding(webhook: &WebhookRecord, name: &str) -> String {
    format!("{}\0header\0{name}", webhook.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WebhookSecret;

    fn record(headers: &[(&str, &str)]) -> WebhookRecord {
        let mut webhook: WebhookRecord = serde_json::from_value(serde_json::json!({
            "id": crate::ids::WebhookId::new(),
            "url": "https://receiver.example/hook",
            "event_types": ["*"],
            "secrets": [],
            "status": "active",
            "created_at": 0,
            "updated_at": 0,
        }))
        .expect("a minimal webhook record");
        webhook.secrets = vec![WebhookSecret::new("whsec_c2VjcmV0LXNlY3JldA==".into(), 0)];
        webhook.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        webhook
    }

    #[test]
    fn credential_headers_are_sealed_at_rest_and_opened_back_other_headers_stay_as_they_are() {
        let keyring = Keyring::random();
        let webhook = record(&[
            ("Authorization", "Bearer tok-visible-nowhere"),
            ("X-Api-Key", "key-visible-nowhere"),
            ("X-Team", "payments"),
        ]);
        let stored = stored_form(&keyring, "acme", &webhook);
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("tok-visible-nowhere") && !json.contains("key-visible-nowhere"));
        assert!(!json.contains("c2VjcmV0LXNlY3JldA"), "{json}");
        assert!(json.contains("payments"), "{json}");
        assert_eq!(
            stored.sealed_headers.keys().collect::<Vec<_>>(),
            ["Authorization", "X-Api-Key"]
        );
        assert!(!needs_reseal(&keyring, &stored));

        let mut read: WebhookRecord = serde_json::from_str(&json).unwrap();
        open(&keyring, "acme", &mut read).unwrap();
        assert_eq!(read.headers, webhook.headers);
        assert!(read.sealed_headers.is_empty());
        assert_eq!(read.secrets[0].secret, webhook.secrets[0].secret);
    }

    #[test]
    fn a_sealed_header_opens_only_for_its_tenant_webhook_and_name() {
        let keyring = Keyring::random();
        let stored = stored_form(&keyring, "acme", &record(&[("Authorization", "Bearer t")]));
        let mut other_tenant = stored.clone();
        assert!(matches!(
            open(&keyring, "globex", &mut other_tenant),
            Err(StoreError::Secret { .. })
        ));
        let mut moved = stored.clone();
        let value = moved.sealed_headers.remove("Authorization").unwrap();
        moved.sealed_headers.insert("X-Api-Key".into(), value);
        // The secret still opens; the header moved to another name does not.
        assert!(matches!(
            open(&keyring, "acme", &mut moved),
            Err(StoreError::Secret { .. })
        ));
    }

    #[test]
    fn a_record_with_a_credential_in_the_clear_or_under_an_old_key_needs_a_reseal() {
        let old = Keyring::random();
        let plain = record(&[("Authorization", "Bearer t")]);
        let mut secrets_only = plain.clone();
        secrets_only.secrets[0].sealed =
            Some(old.seal("acme", plain.id.as_str(), &plain.secrets[0].secret));
        assert!(
            needs_reseal(&old, &secrets_only),
            "a credential header in the clear (written before headers were sealed)"
        );
        let stored = stored_form(&old, "acme", &plain);
        assert!(!needs_reseal(&old, &stored));
        assert!(needs_reseal(&Keyring::random(), &stored));
    }
}
