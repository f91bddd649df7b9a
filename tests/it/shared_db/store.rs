//! The PostgreSQL store seen by two stores ("nodes") on one database, through the `Store`
//! interface: claims are leases the other node respects, a webhook's in-flight cap and rate
//! hold across nodes, a dead node's claims come back after the lease, an outcome needs the
//! lease, a claim may start past the caller's claims and reads only the rows it claims, the
//! schema version is checked, and secrets are sealed in the database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookd::ids::{AttemptId, WebhookId, now_ms};
use hookd::secrets::Keyring;
use hookd::store::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryStatus, DeliveryUpdate, NewEvent, Store,
    StoreError, WebhookRecord, WebhookSecret, WebhookStatus,
};
use serde_json::value::RawValue;

use crate::support::postgres::{fresh_database, on_postgres, query};
use crate::support::{parse_config, test_config_toml};

/// A store on the database at `url`, as a node would open it.
async fn node(url: &str, lease: &str, keyring: &Arc<Keyring>) -> Arc<dyn Store> {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&on_postgres(
        &test_config_toml(dir.path(), "", true),
        url,
        lease,
    ));
    hookd::store::open(&config, keyring.clone())
        .await
        .expect("the PostgreSQL store opens")
}

fn webhook(max_in_flight: Option<u32>, rate: Option<u32>) -> WebhookRecord {
    WebhookRecord {
        id: WebhookId::new(),
        url: "http://127.0.0.1:9/hook".into(),
        description: String::new(),
        event_types: vec!["*".into()],
        channels: None,
        secrets: vec![WebhookSecret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            1,
        )],
        headers: Default::default(),
        sealed_headers: Default::default(),
        status: WebhookStatus::Active,
        disabled_reason: None,
        max_attempts: None,
        retry_schedule_ms: None,
        timeout_ms: None,
        max_in_flight,
        rate_limit_per_sec: rate,
        metadata: Default::default(),
        plugins: Vec::new(),
        failing_since: None,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

async fn append(store: &Arc<dyn Store>, webhook: &WebhookId, n: usize) {
    append_at(store, webhook, n, now_ms()).await;
}

/// Appends `thousands` groups of 1000 events for `webhook`.
async fn append_thousands(store: &Arc<dyn Store>, webhook: &WebhookId, thousands: usize) {
    for _ in 0..thousands {
        append(store, webhook, 1000).await;
    }
}

/// Appends `n` events for `webhook` accepted at `created_at` (so their deliveries are due
/// then).
async fn append_at(store: &Arc<dyn Store>, webhook: &WebhookId, n: usize, created_at: u64) {
    let group = (0..n)
        .map(|i| NewEvent {
            tenant: "acme".into(),
            event_type: "user.created".into(),
            channel: None,
            idempotency_key: None,
            idempotency_window_ms: 0,
            created_at,
            payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
            webhooks: vec![webhook.clone()],
        })
        .collect();
    store.append_events(group).await.unwrap();
}

/// A fresh database, one node on it, and one webhook at `max_in_flight`.
async fn one_node_with_a_webhook(
    max_in_flight: Option<u32>,
) -> (String, Arc<dyn Store>, WebhookRecord) {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let store = node(&url, "30s", &keyring).await;
    let hook = webhook(max_in_flight, None);
    store.insert_webhook("acme", &hook).await.unwrap();
    (url, store, hook)
}

async fn claim(store: &Arc<dyn Store>, webhook: &WebhookId, limit: usize) -> Vec<Claim> {
    claim_besides(store, webhook, &[], limit).await
}

/// A claim by a node that has `in_flight` running already (as the dispatcher asks).
async fn claim_besides(
    store: &Arc<dyn Store>,
    webhook: &WebhookId,
    in_flight: &[Claim],
    limit: usize,
) -> Vec<Claim> {
    claim_besides_from(store, webhook, in_flight, None, limit).await
}

/// [`claim_besides`] with the claim's hint: entries due before `skip_due_before` are skipped.
async fn claim_besides_from(
    store: &Arc<dyn Store>,
    webhook: &WebhookId,
    in_flight: &[Claim],
    skip_due_before: Option<u64>,
    limit: usize,
) -> Vec<Claim> {
    let in_flight = in_flight.iter().map(|c| c.delivery_id.clone()).collect();
    store
        .claim_due(
            "acme",
            webhook,
            &in_flight,
            skip_due_before,
            now_ms(),
            limit,
        )
        .await
        .unwrap()
        .due
}

fn delivered(claim: &Claim, webhook: &WebhookId) -> AttemptOutcome {
    AttemptOutcome {
        tenant: "acme".into(),
        lease: claim.lease,
        attempt: AttemptRecord {
            id: AttemptId::new(),
            delivery_id: claim.delivery_id.clone(),
            webhook_id: webhook.clone(),
            attempt: 1,
            started_at: now_ms(),
            url: "http://127.0.0.1:9/hook".into(),
            latency_ms: 3,
            result: "delivered".into(),
            status_code: Some(200),
            error_code: None,
            error_message: None,
            response_snippet: None,
            next_attempt_at: None,
            plugin_logs: Vec::new(),
            request: None,
            verdict_by: None,
        },
        update: DeliveryUpdate {
            status: DeliveryStatus::Delivered,
            next_attempt_at: None,
            filtered_by: None,
        },
        body_is_event_body: false,
    }
}

fn ids(claims: &[Claim]) -> HashSet<String> {
    claims.iter().map(|c| c.delivery_id.to_string()).collect()
}

#[tokio::test]
async fn two_nodes_never_hold_the_same_delivery_and_share_one_in_flight_cap() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let (a, b) = (
        node(&url, "30s", &keyring).await,
        node(&url, "30s", &keyring).await,
    );
    let hook = webhook(Some(8), None);
    a.insert_webhook("acme", &hook).await.unwrap();
    append(&a, &hook.id, 20).await;

    let first = claim(&a, &hook.id, 5).await;
    assert_eq!(first.len(), 5);
    // The cap is 8 across nodes: B may take 3 more, none of A's.
    let second = claim(&b, &hook.id, 8).await;
    assert_eq!(second.len(), 3, "B gets what the cap leaves");
    assert!(ids(&first).is_disjoint(&ids(&second)));
    assert!(
        claim_besides(&b, &hook.id, &second, 8 - second.len())
            .await
            .is_empty(),
        "the cap is full"
    );
    // A claim B did not start comes back to B (and only to B).
    assert_eq!(ids(&claim(&b, &hook.id, 8).await), ids(&second));

    // A records its five: B may take five more, still none held by anyone else.
    let outcomes = first.iter().map(|c| delivered(c, &hook.id)).collect();
    let results = a.record_attempts(outcomes).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let third = claim_besides(&b, &hook.id, &second, 8 - second.len()).await;
    assert_eq!(third.len(), 5);
    assert!(ids(&third).is_disjoint(&ids(&first)));
    assert!(ids(&third).is_disjoint(&ids(&second)));
    let stats = a
        .stats_days(
            "acme",
            hookd::store::stats::StatsScope::Tenant,
            hookd::store::stats::day_of(now_ms()),
            hookd::store::stats::day_of(now_ms()),
        )
        .await
        .unwrap();
    assert_eq!(
        (stats[0].counts.deliveries, stats[0].counts.delivered),
        (20, 5)
    );
}

#[tokio::test]
async fn a_dead_nodes_claims_return_after_the_lease_and_its_late_outcome_records_nothing() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let a = node(&url, "1s", &keyring).await;
    let b = node(&url, "1s", &keyring).await;
    let hook = webhook(Some(8), None);
    a.insert_webhook("acme", &hook).await.unwrap();
    append(&a, &hook.id, 4).await;
    let held = claim(&a, &hook.id, 8).await;
    assert_eq!(held.len(), 4);
    // A dies: its store is gone without giving its claims back, so nobody renews them.
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        claim(&b, &hook.id, 8).await.is_empty(),
        "A's leases still run"
    );

    let started = Instant::now();
    let taken = crate::support::eventually(
        Duration::from_secs(10),
        "B takes A's deliveries",
        || async {
            let taken = claim(&b, &hook.id, 8).await;
            (!taken.is_empty()).then_some(taken)
        },
    )
    .await;
    eprintln!(
        "a dead node's claims came back after {:?}",
        started.elapsed()
    );
    assert_eq!(ids(&taken), ids(&held));
    assert!(
        taken
            .iter()
            .all(|c| held.iter().all(|h| h.lease != c.lease))
    );

    // An outcome under A's claims (their tokens) arrives after B took over: nothing is
    // recorded, even through the node that holds the deliveries now.
    let results = b
        .record_attempts(held.iter().map(|c| delivered(c, &hook.id)).collect())
        .await
        .unwrap();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(StoreError::LeaseLost(_))))
    );
    let delivery = b
        .delivery("acme", &held[0].delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    assert!(
        b.attempts("acme", &held[0].delivery_id)
            .await
            .unwrap()
            .is_empty()
    );
    // B, the holder, records.
    let results = b
        .record_attempts(taken.iter().map(|c| delivered(c, &hook.id)).collect())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
}

#[tokio::test]
async fn claims_released_at_shutdown_go_to_another_node_at_once() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let a = node(&url, "30s", &keyring).await;
    let b = node(&url, "30s", &keyring).await;
    let hook = webhook(Some(8), None);
    a.insert_webhook("acme", &hook).await.unwrap();
    append(&a, &hook.id, 3).await;
    let held = claim(&a, &hook.id, 8).await;
    assert_eq!(held.len(), 3);
    a.release_claims().await.unwrap();
    assert_eq!(ids(&claim(&b, &hook.id, 8).await), ids(&held));
}

#[tokio::test]
async fn a_webhooks_rate_limit_holds_across_nodes() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let a = node(&url, "30s", &keyring).await;
    let b = node(&url, "30s", &keyring).await;
    let hook = webhook(Some(1000), Some(5));
    a.insert_webhook("acme", &hook).await.unwrap();
    append(&a, &hook.id, 100).await;
    // Both nodes claim as fast as they can for 2 s and record at once.
    let started = Instant::now();
    let mut claimed = 0;
    while started.elapsed() < Duration::from_secs(2) {
        for store in [&a, &b] {
            let got = claim(store, &hook.id, 100).await;
            claimed += got.len();
            store
                .record_attempts(got.iter().map(|c| delivered(c, &hook.id)).collect())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("rate 5/s across two nodes: {claimed} claims in {seconds:.2} s");
    // A full bucket (5) and then 5 per second, whoever claims.
    assert!(
        claimed as f64 <= 5.0 + 5.0 * seconds + 1.0,
        "{claimed} claims in {seconds:.2} s"
    );
    assert!(claimed >= 10, "the limit lets work through: {claimed}");
}

#[tokio::test]
async fn a_claim_that_skips_earlier_due_times_starts_its_scan_there() {
    let (_url, store, hook) = one_node_with_a_webhook(Some(1000)).await;
    // Three groups due 10 ms apart, 20 deliveries each.
    let first_due = now_ms() - 1000;
    for group in 0..3 {
        append_at(&store, &hook.id, 20, first_due + 10 * group).await;
    }
    let head = claim(&store, &hook.id, 100).await;
    assert_eq!(head.len(), 60);
    let dues: Vec<u64> = head
        .iter()
        .map(|c| c.queue_due.expect("a due time"))
        .collect();
    assert!(dues.is_sorted(), "claims come in due order: {dues:?}");
    assert_eq!(
        (dues[0], dues[20], dues[40]),
        (first_due, first_due + 10, first_due + 20)
    );

    // This node runs the first group; the second group's claims ended without their rows
    // moving (a scan from the head would return them again). Skipping before the third
    // group's due time, the scan starts there: the backend uses the hint.
    let from_head = claim_besides(&store, &hook.id, &head[..20], 100).await;
    assert_eq!(ids(&from_head), ids(&head[20..]));
    let resumed = claim_besides_from(&store, &hook.id, &head[..20], Some(dues[40]), 100).await;
    assert_eq!(ids(&resumed), ids(&head[40..]));
    // Skipping from a due time some claims share, those in flight are still left out.
    let resumed = claim_besides_from(&store, &hook.id, &head[..50], Some(dues[49]), 100).await;
    assert_eq!(ids(&resumed), ids(&head[50..]));
}

#[tokio::test]
async fn a_claim_reads_only_the_rows_it_claims_whatever_the_statistics_say() {
    // PL/pgSQL runs a function's statements on cached generic plans, which cannot see the
    // claim's LIMIT, and statistics may not know a webhook's backlog yet. Schema 2 then read
    // every row of the webhook: through a join served by a sequential scan (statistics right,
    // generic plan), or through the by-webhook index and a sort (statistics taken before the
    // backlog came). Either way a claim cost O(backlog).
    let (url, store, hook) = one_node_with_a_webhook(None).await;
    query(&url, "ANALYZE deliveries").await;
    append_thousands(&store, &hook.id, 20).await;
    let webhook_uuid = hook.id.to_string().trim_start_matches("wh_").to_string();
    for statistics in ["taken before the backlog", "up to date"] {
        if statistics == "up to date" {
            query(&url, "ANALYZE deliveries").await;
        }
        // A connection of its own, so that the plans are made now; its transaction's table
        // statistics (`pg_stat_xact_user_tables`) count what the claim read.
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL server answers");
        tokio::spawn(connection);
        client
            .batch_execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        let rows = client
            .query(
                "SELECT delivery_id FROM hookd_claim('acme', $1::text::uuid, 'probe', '{}',
                                                     NULL, $2, 8, 30000, 0)
                  WHERE delivery_id IS NOT NULL",
                &[&webhook_uuid, &(now_ms() as i64)],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 8);
        let read = client
            .query_one(
                "SELECT seq_scan, seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables
                  WHERE relname = 'deliveries'",
                &[],
            )
            .await
            .unwrap();
        let (seq_scans, index_rows): (i64, i64) = (read.get(0), read.get(2));
        assert_eq!(
            (seq_scans, read.get::<_, i64>(1)),
            (0, 0),
            "statistics {statistics}: no sequential scan"
        );
        assert!(
            index_rows < 100,
            "statistics {statistics}: the claim read {index_rows} rows through indexes"
        );
        // Nodes of the release before schema 6 call the function without a skip time (a cap
        // of 16, of which the probe holds 8).
        let rows = client
            .query(
                "SELECT delivery_id FROM hookd_claim('acme', $1::text::uuid, 'older', '{}', $2,
                                                     16, 30000, 0)
                  WHERE delivery_id IS NOT NULL",
                &[&webhook_uuid, &(now_ms() as i64)],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 8, "the schema-2 signature claims too");
        // The poll's query reads the head of the queue too.
        let due = client
            .query(
                "SELECT due FROM hookd_due_webhooks($1)",
                &[&(now_ms() as i64)],
            )
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        let read = client
            .query_one(
                "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables
                  WHERE relname = 'deliveries'",
                &[],
            )
            .await
            .unwrap();
        let (seq_rows, index_rows) = (read.get::<_, i64>(0), read.get::<_, i64>(1));
        assert!(
            seq_rows == 0 && index_rows < 200,
            "statistics {statistics}: the claims and the poll read {seq_rows} rows in \
             sequence and {index_rows} through indexes"
        );
        client.batch_execute("ROLLBACK").await.unwrap();
    }
}

#[tokio::test]
async fn a_queue_table_that_grew_from_empty_is_analyzed_within_seconds() {
    // Autovacuum would wait for its nap (a minute); until then plans take the table for empty.
    // It is switched off for the table here, so that only the node can analyze it.
    let (url, store, hook) = one_node_with_a_webhook(None).await;
    query(
        &url,
        "ALTER TABLE deliveries SET (autovacuum_enabled = false)",
    )
    .await;
    query(&url, "ANALYZE deliveries").await;
    let analyzes = "SELECT analyze_count, (SELECT reltuples FROM pg_class
                                           WHERE oid = 'deliveries'::regclass)
                      FROM pg_stat_user_tables WHERE relname = 'deliveries'";
    assert_eq!(query(&url, analyzes).await[0].get::<_, i64>(0), 1);
    append_thousands(&store, &hook.id, 20).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let row = &query(&url, analyzes).await[0];
        let (count, rows): (i64, f32) = (row.get(0), row.get(1));
        if count >= 2 {
            assert!(
                rows >= 15_000.0,
                "the new statistics count the rows: {rows}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not analyze `deliveries` after it grew from empty to 20k rows"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_with_a_clear_message() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    drop(node(&url, "30s", &keyring).await);
    query(
        &url,
        "INSERT INTO hookd_schema_history (version, name, applied_on, checksum)
         VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&on_postgres(
        &test_config_toml(dir.path(), "", true),
        &url,
        "30s",
    ));
    let refused = hookd::store::open(&config, keyring).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("version 99") && message.contains("newer"),
        "{message}"
    );
}

/// A start-up refusal says what PostgreSQL said (a missing database, with its SQL state), not
/// the driver's bare "db error", and never the URL.
#[tokio::test]
async fn a_database_that_does_not_exist_is_named_in_postgresqls_words() {
    let missing = format!("hookd_missing_{:08x}", rand::random::<u32>());
    let url = crate::support::postgres::database_url(&missing);
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&on_postgres(
        &test_config_toml(dir.path(), "", true),
        &url,
        "30s",
    ));
    let refused = hookd::store::open(&config, Arc::new(Keyring::random()))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains(&format!("database \"{missing}\" does not exist"))
            && message.contains("SQL state 3D000"),
        "{message}"
    );
    assert!(!message.contains("postgres://"), "{message}");
}

#[tokio::test]
async fn the_database_holds_webhook_secrets_and_credential_headers_only_sealed_and_another_key_does_not_open_them()
 {
    const TOKEN: &str = "Bearer pg-credential-header-token";
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let store = node(&url, "30s", &keyring).await;
    let mut hook = webhook(None, None);
    hook.headers = [("Authorization", TOKEN), ("X-Team", "payments")]
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .into();
    store.insert_webhook("acme", &hook).await.unwrap();
    let rows = query(&url, "SELECT record::text FROM webhooks").await;
    let stored: String = rows[0].get(0);
    assert!(stored.contains("hks1:"), "sealed: {stored}");
    assert!(!stored.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert!(!stored.contains("pg-credential-header-token"), "{stored}");
    assert!(
        stored.contains("payments"),
        "other headers stay readable: {stored}"
    );
    let read = store.webhook("acme", &hook.id).await.unwrap().unwrap();
    assert_eq!(
        read.secrets[0].secret,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    );
    assert_eq!(read.headers, hook.headers);
    // A listing leaves the credential sealed, under its name.
    let listed = store.list_webhooks("acme", None, 10).await.unwrap().items;
    assert!(!listed[0].headers.contains_key("Authorization"));
    assert!(listed[0].sealed_headers.contains_key("Authorization"));

    // A row written before headers were sealed (the credential in the clear) is re-sealed.
    let mut old: serde_json::Value = serde_json::from_str(&stored).unwrap();
    old["headers"]["Authorization"] = TOKEN.into();
    old.as_object_mut().unwrap().remove("sealed_headers");
    query(
        &url,
        &format!(
            "UPDATE webhooks SET record = '{}'::jsonb",
            old.to_string().replace('\'', "''")
        ),
    )
    .await;
    assert_eq!(store.reseal_webhooks().await.unwrap(), 1);
    let rows = query(&url, "SELECT record::text FROM webhooks").await;
    let resealed: String = rows[0].get(0);
    assert!(
        !resealed.contains("pg-credential-header-token"),
        "{resealed}"
    );
    assert_eq!(
        store
            .webhook("acme", &hook.id)
            .await
            .unwrap()
            .unwrap()
            .headers,
        hook.headers
    );
    let other = node(&url, "30s", &Arc::new(Keyring::random())).await;
    assert!(matches!(
        other.reseal_webhooks().await,
        Err(StoreError::Secret { .. })
    ));
}

/// Records the plugins a node's store says changed.
#[derive(Default)]
struct HeardPlugins(std::sync::Mutex<Vec<(String, String)>>);

impl hookd::store::PluginListener for HeardPlugins {
    fn plugin_changed(&self, tenant: &str, name: &str) {
        self.0
            .lock()
            .unwrap()
            .push((tenant.to_string(), name.to_string()));
    }
}

#[tokio::test]
async fn a_node_that_missed_a_plugin_notification_hears_of_it_from_the_heads_comparison() {
    let url = fresh_database();
    let keyring = Arc::new(Keyring::random());
    let (one, two) = (
        node(&url, "30s", &keyring).await,
        node(&url, "30s", &keyring).await,
    );
    let bytes = b"a component".to_vec();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    one.put_plugin_version(
        "acme",
        "p",
        &sha,
        &bytes,
        "abc",
        hookd::store::PluginStage::Current,
    )
    .await
    .unwrap();
    // Node two had no listener when the NOTIFY came: it missed it.
    let heard = Arc::new(HeardPlugins::default());
    two.set_plugin_listener(heard.clone());
    let started = Instant::now();
    let within = Duration::from_secs(15);
    while !heard
        .0
        .lock()
        .unwrap()
        .contains(&("acme".into(), "p".into()))
    {
        assert!(
            started.elapsed() < within,
            "the heads comparison did not announce the plugin within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "heard from the heads comparison after {:?}",
        started.elapsed()
    );
    let head = two.plugin_head("acme", "p").await.unwrap().unwrap();
    assert_eq!(head.current.sha256, sha);
    assert_eq!(
        two.plugin_bytes("acme", "p", head.current.id)
            .await
            .unwrap(),
        Some(bytes)
    );
}
