//! Operations: config hot reload, admin keys, the CLI, operational events.

use std::process::Command;
use std::time::Duration;

use hookd::config::{Config, hash_api_key};
use serde_json::{Value, json};

use crate::support::{ACME_KEY, Receiver, TestEngine, eventually, test_config_toml};

const WAIT: Duration = Duration::from_secs(10);
const ADMIN_KEY: &str = "admin-test-key";

fn with_admin(config: &str) -> String {
    format!(
        "admin_api_keys = [\"sha256:{}\"]\n{config}",
        hex::encode(hash_api_key(ADMIN_KEY))
    )
}

/// An engine whose config comes from a file it watches.
async fn engine_from_file() -> (TestEngine, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    std::fs::write(
        &path,
        with_admin(&test_config_toml(&dir.path().join("data"), "", true)),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    (TestEngine::start_in(dir, config).await, path)
}

async fn status_with(engine: &TestEngine, key: &str) -> u16 {
    engine.call("GET", "/v1/webhooks", key, None).await.0
}

/// The real binary on a config file with an admin key, in a temp dir that lives as long as this.
struct Spawned {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    original: String,
    child: std::process::Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn spawned_from_file() -> Spawned {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("hookd.toml");
    let original = with_admin(&test_config_toml(&data, "", true));
    std::fs::write(&path, &original).unwrap();
    let (child, base, log) = crate::crash::spawn_hookd_logged(&path, &data, "info");
    Spawned {
        _dir: dir,
        path,
        original,
        child,
        base,
        log,
    }
}

/// Waits until `key` gets `status` (a reload applied or not).
async fn key_answers(engine: &TestEngine, key: &str, status: u16, what: &str) {
    eventually(WAIT, what, || async {
        (status_with(engine, key).await == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_free_space_reserve_follows_a_reload_and_start_only_keys_keep_their_values() {
    let (engine, path) = engine_from_file().await;
    let original = std::fs::read_to_string(&path).unwrap();
    let post = || async {
        engine
            .call(
                "POST",
                "/v1/events",
                ACME_KEY,
                Some(json!({"type": "user.created", "payload": {}})),
            )
            .await
    };
    assert_eq!(post().await.0, 202);
    let dns_before = engine
        .engine()
        .config()
        .current()
        .delivery
        .dns_servers
        .clone();

    // A reserve larger than any disk: ingest is refused at once, no restart. The same edit
    // changes a start-only key, which keeps its running value.
    let limits = "[limits]\nmin_free_disk_bytes = 9000000000000000000\n";
    let edited = if original.contains("[limits]\n") {
        original.replacen("[limits]\n", limits, 1)
    } else {
        format!("{original}\n{limits}")
    };
    let start_only = "[delivery]\ndns_servers = [\"127.0.0.1:5353\"]\nworker_nice = 7\n";
    let edited = if edited.contains("[delivery]\n") {
        edited.replacen("[delivery]\n", start_only, 1)
    } else {
        format!("{edited}\n{start_only}")
    };
    std::fs::write(&path, &edited).unwrap();
    let refused = eventually(WAIT, "ingest refused for space", || async {
        let (status, body) = post().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(refused["code"], "storage_full", "{refused}");
    assert_eq!(
        engine.engine().config().current().delivery.dns_servers,
        dns_before
    );
    assert_eq!(
        engine.engine().config().current().delivery.worker_nice,
        hookd::delivery::runtime::DEFAULT_WORKER_NICE
    );

    std::fs::write(&path, &original).unwrap();
    eventually(WAIT, "ingest accepted again", || async {
        (post().await.0 == 202).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_valid_config_edit_applies_live_and_an_invalid_one_is_refused_and_reported() {
    let (engine, path) = engine_from_file().await;
    let original = std::fs::read_to_string(&path).unwrap();
    assert_eq!(status_with(&engine, "new-key").await, 401);

    // Add a tenant with a new key; remove nothing else.
    let edited = format!(
        "{original}\n[[tenants]]\nid = \"initech\"\napi_keys = [\"sha256:{}\"]\n",
        hex::encode(hash_api_key("new-key"))
    );
    std::fs::write(&path, &edited).unwrap();
    key_answers(&engine, "new-key", 200, "the new key works").await;

    // An invalid edit: every problem listed, the running config stays.
    std::fs::write(
        &path,
        format!("{edited}\n[limits]\nmax_payload_bytes = 0\nidempotency_window = \"soon\"\n"),
    )
    .unwrap();
    let ready = eventually(WAIT, "the refusal is reported", || async {
        let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
        (ready["config"]["last_result"] == "refused").then_some(ready)
    })
    .await;
    // The probe (no key) says only that the edit was refused; the admin route lists why.
    assert!(ready["config"].get("errors").is_none(), "{ready}");
    let (status, admin) = engine
        .call("GET", "/v1/admin/status", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{admin}");
    let errors = admin["config"]["errors"].to_string();
    assert!(
        errors.contains("limits.max_payload_bytes") && errors.contains("limits.idempotency_window"),
        "every problem listed: {admin}"
    );
    assert_eq!(
        status_with(&engine, "new-key").await,
        200,
        "old config still running"
    );

    // Removing the key: refused from then on.
    std::fs::write(&path, &original).unwrap();
    key_answers(&engine, "new-key", 401, "the removed key is refused").await;
    let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
    assert_eq!(ready["config"]["last_result"], "applied");
}

/// A file `hookd serve` would refuse to start with (no secret key: an empty file, or one
/// truncated by a shell's `>` before the rest is written) is refused live too, instead of
/// dropping every tenant's and admin's key.
#[tokio::test]
async fn an_emptied_config_file_is_refused_as_at_start_and_the_running_config_stays() {
    let (engine, path) = engine_from_file().await;
    std::fs::write(&path, "").unwrap();
    eventually(WAIT, "the refusal is reported", || async {
        let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
        (ready["config"]["last_result"] == "refused").then_some(())
    })
    .await;
    assert_eq!(status_with(&engine, ACME_KEY).await, 200);
    let (status, admin) = engine
        .call("GET", "/v1/admin/status", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "the admin key still works: {admin}");
    assert!(
        admin["config"]["errors"]
            .to_string()
            .contains("security.secret_key"),
        "{admin}"
    );
}

/// A tenant with `key`, as a config line block.
fn tenant_with(id: &str, key: &str) -> String {
    format!(
        "\n[[tenants]]\nid = \"{id}\"\napi_keys = [\"sha256:{}\"]\n",
        hex::encode(hash_api_key(key))
    )
}

/// Writes `text` as a new revision of a volume laid out as Kubernetes mounts a ConfigMap or
/// Secret: `hookd.toml -> ..data/hookd.toml`, `..data -> ..<revision>`; the kubelet swaps
/// revisions by renaming a new `..data` link over the old one, then removes the old revision.
fn publish_revision(volume: &std::path::Path, revision: u32, text: &str) {
    use std::os::unix::fs::symlink;
    let name = format!("..2026_12_05_{revision:02}");
    std::fs::create_dir(volume.join(&name)).unwrap();
    std::fs::write(volume.join(&name).join("hookd.toml"), text).unwrap();
    symlink(&name, volume.join("..data_tmp")).unwrap();
    let old = std::fs::read_link(volume.join("..data")).ok();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    } else {
        symlink("..data/hookd.toml", volume.join("hookd.toml")).unwrap();
    }
}

#[tokio::test]
async fn a_config_mounted_like_a_kubernetes_configmap_reloads_when_its_revision_is_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).unwrap();
    let original = with_admin(&test_config_toml(&dir.path().join("data"), "", true));
    publish_revision(&volume, 1, &original);
    let config = Config::load(&volume.join("hookd.toml")).unwrap();
    let engine = TestEngine::start_in(dir, config).await;
    assert_eq!(status_with(&engine, "new-key").await, 401);

    // Only the `..data` link changes name in the volume's directory: the file hookd was given
    // (`hookd.toml`, a link) is never written, renamed or removed.
    let edited = format!("{original}{}", tenant_with("initech", "new-key"));
    publish_revision(&volume, 2, &edited);
    key_answers(&engine, "new-key", 200, "the new revision's key works").await;

    // An invalid revision is refused like an invalid edit, and the running config stays.
    publish_revision(
        &volume,
        3,
        &format!("{edited}\n[limits]\nmax_payload_bytes = 0\n"),
    );
    eventually(WAIT, "the refusal is reported", || async {
        let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
        (ready["config"]["last_result"] == "refused").then_some(())
    })
    .await;
    assert_eq!(status_with(&engine, "new-key").await, 200);

    // Watching follows the swaps: a fourth revision, without the key, applies too.
    publish_revision(&volume, 4, &original);
    key_answers(&engine, "new-key", 401, "the removed key is refused").await;
    let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
    assert_eq!(
        (&ready["config"]["applied"], &ready["config"]["refused"]),
        (&json!(2), &json!(1)),
        "one reload per revision: {ready}"
    );
}

#[tokio::test]
async fn a_config_file_reached_through_a_symlink_reloads_when_its_target_is_edited() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["etc", "srv/conf"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let target = dir.path().join("srv/conf/hookd.toml");
    let original = with_admin(&test_config_toml(&dir.path().join("data"), "", true));
    std::fs::write(&target, &original).unwrap();
    let link = dir.path().join("etc/hookd.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let config = Config::load(&link).unwrap();
    let engine = TestEngine::start_in(dir, config).await;

    // The edit happens in a directory other than the link's.
    std::fs::write(
        &target,
        format!("{original}{}", tenant_with("initech", "new-key")),
    )
    .unwrap();
    key_answers(&engine, "new-key", 200, "the new key works").await;
}

/// Deployment scripts replace a config directory whole; its watch goes with the old one.
#[tokio::test]
async fn a_config_directory_replaced_whole_keeps_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("hookd.toml");
    let original = with_admin(&test_config_toml(&dir.path().join("data"), "", true));
    std::fs::write(&path, &original).unwrap();
    let config = Config::load(&path).unwrap();
    let engine = TestEngine::start_in(dir, config).await;
    let edited = format!("{original}{}", tenant_with("initech", "new-key"));

    // `rm -rf conf && mkdir conf` and a new file.
    std::fs::remove_dir_all(&conf).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&path, &edited).unwrap();
    key_answers(&engine, "new-key", 200, "the new directory's file applies").await;

    // A new directory renamed over the old one, then an edit in place in it.
    let staged = conf.with_file_name("conf.new");
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("hookd.toml"), &edited).unwrap();
    std::fs::remove_dir_all(&conf).unwrap();
    std::fs::rename(&staged, &conf).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&path, &original).unwrap();
    key_answers(
        &engine,
        "new-key",
        401,
        "an edit in the renamed directory applies",
    )
    .await;
}

#[tokio::test]
async fn sighup_rereads_the_config_file_and_leaves_the_engine_running() {
    let spawned = spawned_from_file();
    let (base, log) = (&spawned.base, &spawned.log);
    let mut child = crate::crash::KillOnDrop(spawned.child);
    let http = reqwest::Client::new();
    let reloads = || async {
        let ready: Value = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            ready["config"]["applied"].as_u64().unwrap_or(0),
            ready["config"]["refused"].as_u64().unwrap_or(0),
        )
    };
    assert_eq!(reloads().await, (0, 0));
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // The file did not change: a file event would do nothing, the signal reads it anyway.
    hangup();
    eventually(WAIT, "the SIGHUP reload is applied", || async {
        (reloads().await == (1, 0)).then_some(())
    })
    .await;
    // The line is read from the child's stdout by another thread: it may trail the counter.
    eventually(WAIT, "the log says why it reloaded", || async {
        log.lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("reloading the configuration on request"))
            .then_some(())
    })
    .await;
    hangup();
    eventually(WAIT, "a second SIGHUP reloads again", || async {
        (reloads().await == (2, 0)).then_some(())
    })
    .await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP does not stop hookd"
    );
    let r = http
        .get(format!("{base}/v1/webhooks"))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Issue 12: renaming `secret_key` to `secret_kye` in the watched file made `/readyz` print the
/// TOML error with its source line (the sealing key) to anyone, and log it seven times.
#[tokio::test]
async fn a_refused_reload_never_shows_its_values_on_the_probe_or_in_the_logs() {
    let Spawned {
        _dir,
        path,
        original,
        mut child,
        base,
        log,
    } = spawned_from_file();
    let http = reqwest::Client::new();
    let readyz = || async {
        let text = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (serde_json::from_str::<Value>(&text).unwrap(), text)
    };

    let admin_errors = || async {
        let admin: Value = http
            .get(format!("{base}/v1/admin/status"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        admin["config"]["errors"].to_string()
    };

    // A secret-looking value that validation refuses...
    let leaked = "c2VjcmV0LWxvb2tpbmctdmFsdWUtdGhhdC1tdXN0LW5vdC1sZWFrIQ==";
    let bad_value = original.replace(
        "[delivery]\n",
        &format!("[delivery]\nconnect_timeout = \"{leaked}\"\n"),
    );
    assert_ne!(bad_value, original);
    std::fs::write(&path, &bad_value).unwrap();
    let (_, text) = eventually(WAIT, "the first refusal is reported", || async {
        let (ready, text) = readyz().await;
        (ready["config"]["refused"] == 1).then_some((ready, text))
    })
    .await;
    assert!(!text.contains(leaked), "/readyz shows the value: {text}");
    let errors = admin_errors().await;
    assert!(errors.contains("`delivery.connect_timeout`"), "{errors}");
    assert!(!errors.contains(leaked), "{errors}");

    // ...and the issue's edit: the sealing key's line no longer parses as a known key.
    let edited = original.replace("secret_key = ", "secret_kye = ");
    assert_ne!(edited, original);
    std::fs::write(&path, &edited).unwrap();
    let (ready, text) = eventually(WAIT, "the second refusal is reported", || async {
        let (ready, text) = readyz().await;
        (ready["config"]["refused"] == 2).then_some((ready, text))
    })
    .await;
    assert_eq!(
        (
            ready["status"].as_str(),
            ready["config"]["last_result"].as_str()
        ),
        (Some("ready"), Some("refused")),
        "{text}"
    );
    for needle in [crate::support::TEST_SECRET_KEY, "secret_kye"] {
        assert!(!text.contains(needle), "/readyz shows `{needle}`: {text}");
    }
    // The admin route names file, line and table, without the value.
    let errors = admin_errors().await;
    assert!(errors.contains("hookd.toml:"), "{errors}");
    assert!(
        errors.contains("`security`") && errors.contains("unknown key"),
        "{errors}"
    );
    assert!(
        !errors.contains(crate::support::TEST_SECRET_KEY),
        "{errors}"
    );

    // Touching the file again without changing it logs nothing new.
    let before = log.lock().unwrap().len();
    std::fs::write(&path, &edited).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (ready, _) = readyz().await;
    assert_eq!(
        ready["config"]["refused"], 2,
        "one edit, one refusal: {ready}"
    );

    std::fs::write(&path, &original).unwrap();
    eventually(WAIT, "the fixed file applies", || async {
        (readyz().await.0["config"]["last_result"] == "applied").then_some(())
    })
    .await;
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    crate::crash::wait_with_timeout(&mut child, Duration::from_secs(30));
    let lines = log.lock().unwrap().clone();
    assert!(lines.len() > before, "the fix was logged");
    let all = lines.join("\n");
    for needle in [crate::support::TEST_SECRET_KEY, leaked] {
        assert!(!all.contains(needle), "the log shows `{needle}`");
    }
    let refusals = lines
        .iter()
        .filter(|l| l.contains("config reload refused") && l.contains("`security`"))
        .count();
    assert_eq!(refusals, 1, "one refused edit is logged once:\n{all}");
}

#[tokio::test]
async fn admin_routes_need_an_admin_key_and_tenant_keys_never_reach_them() {
    let (engine, _path) = engine_from_file().await;
    let receiver = Receiver::start().await;
    engine.create_webhook(json!({"url": receiver.url})).await;
    engine.send_event("user.created", json!({})).await;

    let (status, tenants) = engine
        .call("GET", "/v1/admin/tenants", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{tenants}");
    let acme = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme")
        .unwrap();
    assert_eq!(acme["webhooks"], 1);
    assert_eq!(acme["events"], 1);
    let (status, engine_status) = engine
        .call("GET", "/v1/admin/status", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(engine_status["tenants"], 2);

    let (status, err) = engine
        .call("GET", "/v1/admin/tenants", ACME_KEY, None)
        .await;
    assert_eq!((status, err["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = engine.call("GET", "/v1/admin/status", "nope", None).await;
    assert_eq!(status, 401);
    // And the admin key is not a tenant key.
    assert_eq!(status_with(&engine, ADMIN_KEY).await, 401);
}

#[test]
fn check_config_exits_1_listing_every_problem_and_0_on_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"x\"\n[delivery]\nattempt_timeout = \"soon\"\n[[tenants]]\nid = \"A B\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    for key in ["`listen`", "`delivery.attempt_timeout`", "`tenants[0].id`"] {
        assert!(text.contains(key), "{key} missing in: {text}");
    }
    let repo_config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let out = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["check-config", repo_config])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn plugin_check_accepts_our_world_and_names_what_it_refuses() {
    let good = crate::plugins::wasm("json-filter");
    let bad = crate::plugins::wasm("bad-import");
    let dir = tempfile::tempdir().unwrap();
    let (good_path, bad_path) = (dir.path().join("good.wasm"), dir.path().join("bad.wasm"));
    std::fs::write(&good_path, good).unwrap();
    std::fs::write(&bad_path, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["plugin", "check"])
        .arg(&good_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("filter"));
    let out = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["plugin", "check"])
        .arg(&bad_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("evil:net/socket"));
}

fn types_received(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn operational_events_tell_a_subscribed_webhook_about_trouble_without_loops() {
    let engine = TestEngine::start_with("failing_event_after_attempts = 2").await;
    let flaky = Receiver::start().await;
    let alerts = Receiver::start().await;
    let everything = Receiver::start().await;
    flaky.respond(500);
    let flaky_hook = engine
        .create_webhook(json!({"url": flaky.url, "max_attempts": 4}))
        .await;
    let alert_hook = engine
        .create_webhook(json!({"url": alerts.url, "event_types": ["hookd.*"]}))
        .await;
    engine
        .create_webhook(json!({"url": everything.url, "event_types": ["*"]}))
        .await;

    // Fails twice (failing), then recovers.
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let flaky_delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["webhook_id"] == flaky_hook["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(WAIT, "failing alert", || async {
        types_received(&alerts)
            .contains(&"hookd.delivery.failing".to_string())
            .then_some(())
    })
    .await;
    flaky.respond(200);
    eventually(WAIT, "recovered alert", || async {
        types_received(&alerts)
            .contains(&"hookd.delivery.recovered".to_string())
            .then_some(())
    })
    .await;
    let failing = alerts
        .received()
        .into_iter()
        .find(|r| r.json()["type"] == "hookd.delivery.failing")
        .unwrap();
    assert_eq!(
        failing.json()["data"]["delivery_id"],
        flaky_delivery.as_str()
    );
    assert_eq!(failing.json()["data"]["attempt"], 2);

    // Exhausted: a 400 fails at once; then 410 disables the webhook.
    flaky.respond(400);
    engine.send_event("user.created", json!({"n": 2})).await;
    eventually(WAIT, "exhausted alert", || async {
        types_received(&alerts)
            .contains(&"hookd.delivery.exhausted".to_string())
            .then_some(())
    })
    .await;
    flaky.respond(410);
    engine.send_event("user.created", json!({"n": 3})).await;
    let disabled: Value = eventually(WAIT, "disabled alert", || async {
        alerts
            .received()
            .into_iter()
            .find(|r| r.json()["type"] == "hookd.webhook.disabled")
            .map(|r| r.json())
    })
    .await;
    assert_eq!(disabled["data"]["webhook_id"], flaky_hook["id"]);

    // The alert webhook itself fails: no operational events about it, so no loop.
    alerts.respond(500);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, events) = engine.get("/v1/events?limit=250").await;
    let about_alert_hook = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["webhook_id"] == alert_hook["id"])
        .count();
    assert_eq!(about_alert_hook, 0);
    // `*` never matched an operational event.
    assert!(
        types_received(&everything)
            .iter()
            .all(|t| !t.starts_with("hookd."))
    );
    // Producers cannot post hookd.* events.
    let (status, err) = engine
        .post(
            "/v1/events",
            json!({"type": "hookd.delivery.failing", "payload": {}}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("reserved_event_type"))
    );
}

#[tokio::test]
async fn a_failing_plugin_emits_hookd_plugin_failed_once_per_delivery() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["50ms"]"#).await;
    let victim = Receiver::start().await;
    let alerts = Receiver::start().await;
    let (status, _) = {
        let response = engine
            .http
            .put(engine.url("/v1/plugins/boom"))
            .bearer_auth(ACME_KEY)
            .body(crate::plugins::wasm("trap"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 201);
    engine
        .create_webhook(json!({"url": victim.url, "max_attempts": 5, "plugins": [{"name": "boom", "config": {"mode": "panic", "hook": "filter"}}]}))
        .await;
    engine
        .create_webhook(json!({"url": alerts.url, "event_types": ["hookd.plugin.failed"]}))
        .await;
    engine.send_event("user.created", json!({})).await;
    let got = alerts.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["data"]["error_code"], "plugin_trap");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alerts.count(),
        1,
        "one alert for repeated identical failures"
    );
}

#[tokio::test]
async fn secrets_and_api_keys_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hookd.toml");
    std::fs::write(&config, test_config_toml(&data, "", true)).unwrap();
    let receiver = Receiver::start().await;
    let (mut child, base, log) = crate::crash::spawn_hookd_logged(&config, &data, "debug");
    let http = reqwest::Client::new();
    let secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQh";
    let webhook: Value = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(ACME_KEY)
        .json(&json!({"url": receiver.url, "secret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = webhook["id"].as_str().unwrap();
    let rotated: Value = http
        .post(format!("{base}/v1/webhooks/{id}/rotate-secret"))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    for _ in 0..3 {
        http.post(format!("{base}/v1/events"))
            .bearer_auth(ACME_KEY)
            .json(&json!({"type": "user.created", "payload": {}}))
            .send()
            .await
            .unwrap();
    }
    // A wrong key is refused without echoing it.
    let _ = http
        .get(format!("{base}/v1/webhooks"))
        .bearer_auth("wrong-key-XYZ")
        .send()
        .await;
    receiver.wait_for(3, WAIT).await;
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    crate::crash::wait_with_timeout(&mut child, Duration::from_secs(30));

    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("attempt finished"), "debug logs were captured");
    // The attempt's fields are JSON values, not Rust's debug text (`"Some(200)"`).
    let finished: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "attempt finished")
        .expect("an attempt finished line");
    assert_eq!(finished["status"], 200, "{finished}");
    assert!(finished.get("error").is_none(), "{finished}");
    for needle in [
        secret,
        &secret["whsec_".len()..],
        new_secret.as_str(),
        &new_secret["whsec_".len()..],
        ACME_KEY,
        "wrong-key-XYZ",
        // The key sealing secrets at rest, and the sealed form of a secret.
        crate::support::TEST_SECRET_KEY,
        "hks1:",
    ] {
        assert!(!log.contains(needle), "`{needle}` appears in the logs");
    }
}

/// A second engine on a data dir in use is refused with a message that says so, once. (sled
/// only: on PostgreSQL several engines share one database by design.)
#[tokio::test]
async fn a_second_engine_on_a_data_dir_in_use_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("hookd.toml");
    std::fs::write(&path, test_config_toml(&data, "", true)).unwrap();
    let (child, _base, _log) = crate::crash::spawn_hookd_logged(&path, &data, "info");
    let _first = crate::crash::KillOnDrop(child);
    let mut second = crate::crash::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hookd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data")
            .arg(&data)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Bounded: a second engine that starts instead of refusing fails the test, not hangs it.
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second engine started on a data dir in use"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(1));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut second.0.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(
        out.matches("another process has this data dir open")
            .count(),
        1,
        "{out}"
    );
    assert!(!out.contains("WouldBlock"), "{out}");
}
