//! Webhook secrets and credential headers at rest: sealed in sled with the configured key, so a
//! copied data dir alone reveals none; a wrong key stops the start with a clear error instead of signing wrongly;
//! key rotation re-seals; and the API shows a secret only in the answers to create and rotate.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{
    ACME_KEY, Receiver, TEST_SECRET_KEY, TestEngine, files, parse_config, test_config_toml,
};

const WAIT: Duration = Duration::from_secs(15);
const GIVEN_SECRET: &str = "whsec_Z2l2ZW4tc2VjcmV0LW9mLWFjbWUtdGhhdC1tdXN0LXN0YXk=";
const OTHER_KEY: &str = "b3RoZXIta2V5LW5vdC10aGUtc2VhbGluZy1vbmUhISE=";
/// A static credential header of the first webhook: sent with every attempt, stored sealed.
const CREDENTIAL: &str = "Bearer static-credential-of-acme-sealed-at-rest";

/// The forms a secret could take in a file: `whsec_…`, its base64 body, its raw bytes.
fn needles(secret: &str) -> Vec<Vec<u8>> {
    let body = &secret["whsec_".len()..];
    vec![
        secret.as_bytes().to_vec(),
        body.as_bytes().to_vec(),
        STANDARD.decode(body).unwrap(),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn verify(secret: &str, received: &crate::support::receiver::Received) {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&received.body, &received.headers)
        .unwrap_or_else(|e| panic!("signature with {secret} should verify: {e:?}"));
}

/// Two webhooks (one with a secret the client chose and a credential header), one rotation.
/// Returns (webhook ids, every secret the API returned).
async fn webhooks_with_rotated_secrets(
    engine: &TestEngine,
    receiver: &Receiver,
) -> (Vec<String>, Vec<String>) {
    let first = engine
        .create_webhook(json!({
            "url": receiver.url,
            "secret": GIVEN_SECRET,
            "headers": {"Authorization": CREDENTIAL, "X-Team": "payments"},
        }))
        .await;
    let second = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = first["id"].as_str().unwrap().to_string();
    let (status, rotated) = engine
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let secrets = vec![
        GIVEN_SECRET.to_string(),
        second["secret"].as_str().unwrap().to_string(),
        rotated["secret"].as_str().unwrap().to_string(),
    ];
    (
        vec![id, second["id"].as_str().unwrap().to_string()],
        secrets,
    )
}

#[tokio::test]
async fn a_copied_data_dir_holds_no_secret_in_any_form_and_the_api_shows_none_after_create() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let (ids, secrets) = webhooks_with_rotated_secrets(&engine, &receiver).await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let got = receiver.wait_for(2, WAIT).await;
    // Signing used the opened secrets: the rotated webhook's request verifies with the new
    // and the old secret, the other with its own.
    for request in &got {
        let secret_ok = secrets
            .iter()
            .filter(|s| {
                standardwebhooks::Webhook::new(s)
                    .unwrap()
                    .verify(&request.body, &request.headers)
                    .is_ok()
            })
            .count();
        assert!(secret_ok >= 1, "no secret verifies a delivered request");
    }
    assert_eq!(
        got.iter()
            .filter(|r| r.header("authorization") == CREDENTIAL)
            .count(),
        1,
        "the first webhook's request carries its credential header"
    );

    // Every read route of the tenant: no secret in any answer.
    let evt = event["id"].as_str().unwrap();
    let dlv = event["deliveries"][0]["id"].as_str().unwrap();
    engine.wait_delivery(dlv, "delivered").await;
    let mut reads = vec![
        "/v1/webhooks".to_string(),
        "/v1/events".to_string(),
        format!("/v1/events/{evt}"),
        "/v1/deliveries".to_string(),
        format!("/v1/deliveries/{dlv}"),
        "/v1/stats".to_string(),
    ];
    for id in &ids {
        reads.push(format!("/v1/webhooks/{id}"));
        reads.push(format!("/v1/webhooks/{id}/stats"));
        reads.push(format!("/v1/deliveries?webhook_id={id}"));
    }
    for path in &reads {
        let (status, body) = engine.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        for secret in &secrets {
            assert!(
                !text.contains(&secret["whsec_".len()..]),
                "{path} shows a secret"
            );
        }
        assert!(
            !text.contains(CREDENTIAL),
            "{path} shows the credential header"
        );
    }
    // The listing (records left sealed) and the single read (opened) show it by name only
    // (names are kept lowercase).
    let (_, listed) = engine.get("/v1/webhooks").await;
    let (_, single) = engine.get(&format!("/v1/webhooks/{}", ids[0])).await;
    let listed = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == ids[0].as_str())
        .unwrap()
        .clone();
    for view in [&listed, &single] {
        assert_eq!(
            view["headers"],
            json!({"authorization": null, "x-team": "payments"}),
            "{view}"
        );
    }
    let metrics = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in &secrets {
        assert!(!metrics.contains(&secret["whsec_".len()..]));
    }

    // Stop (final flush), copy the data dir, scan every byte of every file.
    let data = engine.data_dir.path().to_path_buf();
    let mut engine = engine;
    engine.engine.take().unwrap().shutdown().await;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    let mut scanned = 0;
    let mut url_seen = false;
    for file in files(copy.path()) {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        url_seen |= contains(&bytes, receiver.url.as_bytes());
        for secret in &secrets {
            for needle in needles(secret) {
                assert!(
                    !contains(&bytes, &needle),
                    "{} holds a webhook secret in the clear",
                    file.display()
                );
            }
        }
        assert!(
            !contains(&bytes, b"static-credential-of-acme"),
            "{} holds the credential header in the clear",
            file.display()
        );
    }
    // The scan can see plaintext: the webhook URL (not secret) is stored as is.
    assert!(
        url_seen,
        "the scan found the webhook URL in {scanned} bytes"
    );
}

#[tokio::test]
async fn another_key_cannot_open_a_copied_data_dir_and_rotation_reseals_with_the_new_key() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let (_, secrets) = webhooks_with_rotated_secrets(&engine, &receiver).await;
    let data = engine.data_dir.path().to_path_buf();
    let mut engine = engine;
    engine.engine.take().unwrap().shutdown().await;

    // A thief's copy opened with another key: the start fails and says why.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    let stolen = test_config_toml(copy.path(), "", true).replace(TEST_SECRET_KEY, OTHER_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = hookd::start(parse_config(&stolen), listener, CancellationToken::new())
        .await
        .expect_err("another key must not start on sealed secrets");
    let message = err.to_string();
    let sealing_id = hookd::secrets::key_id(&hookd::secrets::parse_key(TEST_SECRET_KEY).unwrap());
    assert!(
        message.contains("does not open the webhook secrets")
            && message.contains(&sealing_id)
            && message.contains("previous_secret_keys"),
        "{message}"
    );
    assert!(!message.contains(TEST_SECRET_KEY) && !message.contains(OTHER_KEY));

    // Rotation of the sealing key: the new key current, the old one previous. The start
    // re-seals, deliveries are signed with the right secrets, ...
    let rotated = test_config_toml(&data, "", true).replace(
        &format!("secret_key = \"{TEST_SECRET_KEY}\""),
        &format!("secret_key = \"{OTHER_KEY}\"\nprevious_secret_keys = [\"{TEST_SECRET_KEY}\"]"),
    );
    let engine = TestEngine::start_in(engine.data_dir, parse_config(&rotated)).await;
    engine.send_event("user.created", json!({"n": 2})).await;
    let got = receiver.wait_for(2, WAIT).await;
    let second = got
        .iter()
        .find(|r| {
            standardwebhooks::Webhook::new(&secrets[1])
                .unwrap()
                .verify(&r.body, &r.headers)
                .is_ok()
        })
        .expect("the second webhook's delivery verifies with its secret");
    verify(&secrets[1], second);
    let first = got
        .iter()
        .find(|r| r.header("webhook-id") != second.header("webhook-id"))
        .unwrap();
    verify(&secrets[2], first);
    verify(GIVEN_SECRET, first);
    assert_eq!(first.header("authorization"), CREDENTIAL);

    // ... and after the next start the old key is no longer needed.
    let mut engine = engine;
    engine.engine.take().unwrap().shutdown().await;
    let new_only = test_config_toml(&data, "", true).replace(TEST_SECRET_KEY, OTHER_KEY);
    let engine = TestEngine::start_in(engine.data_dir, parse_config(&new_only)).await;
    engine.send_event("user.created", json!({"n": 3})).await;
    let got = receiver.wait_for(4, WAIT).await;
    let after: Vec<_> = got[2..].iter().collect();
    assert!(after.iter().any(|r| {
        standardwebhooks::Webhook::new(&secrets[2])
            .unwrap()
            .verify(&r.body, &r.headers)
            .is_ok()
    }));
    assert!(after.iter().any(|r| {
        standardwebhooks::Webhook::new(&secrets[1])
            .unwrap()
            .verify(&r.body, &r.headers)
            .is_ok()
    }));
}

#[tokio::test]
async fn without_a_secret_key_the_engine_refuses_to_start_and_check_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_toml(dir.path(), "", true)
        .replace(&format!("secret_key = \"{TEST_SECRET_KEY}\""), "");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = hookd::start(parse_config(&text), listener, CancellationToken::new())
        .await
        .expect_err("no key, no start");
    assert!(err.to_string().contains("no secret key"), "{err}");
    assert!(err.to_string().contains("HOOKD_SECRET_KEY"), "{err}");

    // The binary's check-config: the same refusal, and the environment variable wins.
    let file = dir.path().join("hookd.toml");
    std::fs::write(&file, &text).unwrap();
    let run = |env: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"));
        command.arg("check-config").arg(&file);
        command.env_remove("HOOKD_SECRET_KEY");
        if let Some(key) = env {
            command.env("HOOKD_SECRET_KEY", key);
        }
        command.output().unwrap()
    };
    let refused = run(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no secret key"));
    assert!(run(Some(OTHER_KEY)).status.success());
    let malformed = run(Some("too-short"));
    assert!(!malformed.status.success());
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(
        stderr.contains("HOOKD_SECRET_KEY") && !stderr.contains("too-short"),
        "{stderr}"
    );

    // `hookd secret-key` prints a key that check-config accepts.
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .arg("secret-key")
        .output()
        .unwrap();
    let key = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(STANDARD.decode(key.trim()).unwrap().len(), 32);
    assert!(run(Some(key.trim())).status.success());
}

#[tokio::test]
async fn the_secret_is_returned_by_create_and_rotate_only() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let created = engine.create_webhook(json!({"url": receiver.url})).await;
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["id"].as_str().unwrap();
    let (status, patched) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            ACME_KEY,
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, got) = engine.get(&format!("/v1/webhooks/{id}")).await;
    let (_, list) = engine.get("/v1/webhooks").await;
    for body in [&patched, &got, &list["data"][0]] {
        assert!(body.get("secret").is_none_or(Value::is_null), "{body}");
        assert!(!body.to_string().contains("whsec_"), "{body}");
        assert!(!body.to_string().contains("hks1:"), "{body}");
    }
}
