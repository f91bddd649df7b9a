//! Example sign plugin `github-signer`: adds GitHub's webhook signature header,
//! `x-hub-signature-256: sha256=<hex HMAC-SHA256 of the body>`, computed by the host through
//! `signing-key.mac` with the webhook's secret, so the secret never enters the plugin.
//!
//! Receivers verify it as they verify GitHub's, with the webhook's secret key bytes (the
//! base64-decoded part after `whsec_`) as the HMAC key.
//!
//! Config (optional; `{}` or empty): `{"header": "x-hub-signature-256"}` to use another header
//! name. hookd's own `webhook-signature` headers are still added after this hook.

use hookd_plugin_sdk::{
    Description, Event, HookResult, Meta, PluginError, Sign, json, signing_key,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    header: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            header: "x-hub-signature-256".to_owned(),
        }
    }
}

impl Config {
    fn parse(config: &str) -> HookResult<Self> {
        let parsed: Self = json::parse_config_or_default(config)?;
        let valid_name = !parsed.header.is_empty()
            && parsed
                .header
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid_name {
            return Err(PluginError::InvalidConfig(format!(
                "`header` `{}` is not a header name",
                parsed.header
            )));
        }
        Ok(parsed)
    }
}

struct GithubSigner;

impl Meta for GithubSigner {
    fn describe() -> Description {
        Description::new("github-signer", env!("CARGO_PKG_VERSION"), &["sign"])
    }

    fn validate_config(config: String) -> Result<(), String> {
        Config::parse(&config)
            .map(drop)
            .map_err(|error| error.message().to_owned())
    }
}

impl Sign for GithubSigner {
    fn sign(config: String, event: Event) -> HookResult<Vec<(String, String)>> {
        let config = Config::parse(&config)?;
        let mac = signing_key::hmac_sha256(&event.payload);
        let value = format!("sha256={}", signing_key::to_hex(&mac));
        Ok(vec![(config.header, value)])
    }
}

hookd_plugin_sdk::export_sign!(GithubSigner);
