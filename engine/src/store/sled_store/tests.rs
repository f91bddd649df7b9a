//! The sled backend through its `Store` interface, on real temp dirs: round trips, the
//! schedule through page splits, idempotency, replay of the log into an empty sled, atomic
//! webhook deletion, purges, and tenants kept apart.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{DATA_DIR_IN_USE, SledStore};
use crate::ids::{AttemptId, DeliveryId, EventId, WebhookId};
use crate::secrets::Keyring;
use crate::store::stats::{StatsScope, day_of};
use crate::store::{
    Appended, AttemptOutcome, AttemptRecord, Claim, DeliveryFilter, DeliveryStatus, DeliveryUpdate,
    EventFilter, NewEvent, Store, WebhookRecord, WebhookSecret, WebhookStatus,
};

/// The tests' clock: one instant per test binary (idempotency windows are measured against the
/// real clock, so a fixed date would expire them).
fn now() -> u64 {
    static START: std::sync::LazyLock<u64> = std::sync::LazyLock::new(crate::ids::now_ms);
    *START
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::random())
}

fn webhook() -> WebhookRecord {
    WebhookRecord {
        id: WebhookId::new(),
        url: "https://receiver.example/hook".into(),
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
        timeout_ms: None,
        max_in_flight: None,
        rate_limit_per_sec: None,
        retry_schedule_ms: None,
        metadata: Default::default(),
        plugins: Vec::new(),
        failing_since: None,
        created_at: 1,
        updated_at: 1,
    }
}

fn event(tenant: &str, webhooks: &[&WebhookId], key: Option<&str>, at: u64) -> NewEvent {
    NewEvent {
        tenant: tenant.into(),
        event_type: "order.paid".into(),
        channel: Some("+15550100".into()),
        idempotency_key: key.map(str::to_string),
        idempotency_window_ms: 86_400_000,
        created_at: at,
        payload: RawValue::from_string(format!(r#"{{"at":{at},"pad":"{}"}}"#, "x".repeat(100)))
            .unwrap(),
        webhooks: webhooks.iter().map(|w| (*w).clone()).collect(),
    }
}

/// Every delivery of `acme`'s `webhook` in its queue, whenever due, from the head.
async fn everything_due(store: &Arc<dyn Store>, webhook: &WebhookId) -> crate::store::QueueHead {
    store
        .claim_due("acme", webhook, &HashSet::new(), None, u64::MAX - 1, 10_000)
        .await
        .unwrap()
}

/// Opens the store in `dir`. A store closed and dropped just before may still hold sled's lock
/// on the directory for a moment: sled releases it when its last I/O task (on its own thread
/// pool) drops its handle, which a busy machine can delay (seen once in CI). So a lock error is
/// retried for up to 5 s; any other error fails at once.
async fn open(dir: &std::path::Path, keyring: Arc<Keyring>) -> Arc<dyn Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (dir, keyring) = (dir.to_path_buf(), keyring.clone());
        match tokio::task::spawn_blocking(move || SledStore::open(&dir, keyring))
            .await
            .unwrap()
        {
            Ok(store) => return Arc::new(store),
            Err(err)
                if err.to_string().contains(DATA_DIR_IN_USE)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(err) => panic!("the store does not open: {err}"),
        }
    }
}

fn created(appended: &Appended) -> (EventId, Vec<DeliveryId>) {
    match appended {
        Appended::Created { event, deliveries } => (
            event.id.clone(),
            deliveries.iter().map(|d| d.id.clone()).collect(),
        ),
        Appended::Duplicate(_) => panic!("a duplicate"),
    }
}

fn outcome(
    tenant: &str,
    delivery: &DeliveryId,
    webhook: &WebhookId,
    attempt: u32,
    status: DeliveryStatus,
    retry_at: Option<u64>,
) -> AttemptOutcome {
    AttemptOutcome {
        tenant: tenant.into(),
        lease: 0,
        attempt: AttemptRecord {
            id: AttemptId::new(),
            delivery_id: delivery.clone(),
            webhook_id: webhook.clone(),
            attempt,
            started_at: now() + u64::from(attempt),
            url: "https://receiver.example/hook".into(),
            latency_ms: 7,
            result: match status {
                DeliveryStatus::Delivered => "delivered",
                _ if retry_at.is_some() => "failed",
                _ => "exhausted",
            }
            .into(),
            status_code: Some(if status == DeliveryStatus::Delivered {
                200
            } else {
                503
            }),
            error_code: (status != DeliveryStatus::Delivered).then(|| "http_status".into()),
            error_message: None,
            response_snippet: Some("ok".into()),
            next_attempt_at: retry_at,
            plugin_logs: Vec::new(),
            request: None,
            verdict_by: None,
        },
        update: DeliveryUpdate {
            status: if retry_at.is_some() {
                DeliveryStatus::Pending
            } else {
                status
            },
            next_attempt_at: retry_at,
            filtered_by: None,
        },
        body_is_event_body: false,
    }
}

#[tokio::test]
async fn events_deliveries_and_attempts_round_trip_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let appended = store
        .append_events(vec![event("acme", &[&hook.id], None, now())])
        .await
        .unwrap();
    let (event_id, deliveries) = created(&appended[0]);
    let read = store.event("acme", &event_id).await.unwrap().unwrap();
    assert!(read.payload.get().contains("xxxx"));
    assert_eq!(read.channel.as_deref(), Some("+15550100"));

    let head = store
        .claim_due("acme", &hook.id, &HashSet::new(), None, now() + 1, 8)
        .await
        .unwrap();
    assert_eq!(head.due.len(), 1);
    assert_eq!(head.due[0].delivery_id, deliveries[0]);

    let results = store
        .record_attempts(vec![outcome(
            "acme",
            &deliveries[0],
            &hook.id,
            1,
            DeliveryStatus::Failed,
            Some(now() + 5_000),
        )])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    let pending = store
        .delivery("acme", &deliveries[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (pending.status, pending.attempts, pending.next_attempt_at),
        (DeliveryStatus::Pending, 1, Some(now() + 5_000))
    );
    let head = store
        .claim_due("acme", &hook.id, &HashSet::new(), None, now() + 1, 8)
        .await
        .unwrap();
    assert!(head.due.is_empty());
    assert_eq!(head.next_due, Some(now() + 5_000));

    store
        .record_attempts(vec![outcome(
            "acme",
            &deliveries[0],
            &hook.id,
            2,
            DeliveryStatus::Delivered,
            None,
        )])
        .await
        .unwrap();
    let attempts = store.attempts("acme", &deliveries[0]).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[0].attempt, attempts[1].attempt), (1, 2));
    assert!(attempts[0].id.as_str().starts_with("att_"));
    assert_ne!(attempts[0].id, attempts[1].id);
    let done = store
        .delivery("acme", &deliveries[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, DeliveryStatus::Delivered);
    assert_eq!(done.last_status_code, Some(200));

    let day = day_of(now());
    let stats = store
        .stats_days("acme", StatsScope::Tenant, day, day)
        .await
        .unwrap();
    let counts = &stats[0].counts;
    assert_eq!(
        (counts.events, counts.deliveries, counts.delivered),
        (1, 1, 1)
    );
    assert_eq!(counts.latency.count, 2);
    let usage = store.tenant_usage("acme").await.unwrap();
    assert_eq!((usage.events, usage.pending_deliveries), (1, 0));
    assert!(usage.stored_bytes > 100);
    let health = store.webhook_health("acme", &hook.id).await.unwrap();
    assert_eq!(health.consecutive_failures, 0);
    assert!(health.last_failure_at.is_some() && health.last_success_at.is_some());
}

#[tokio::test]
async fn idempotency_keys_resolve_within_a_group_and_across_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let first = store
        .append_events(vec![
            event("acme", &[], Some("k1"), now()),
            event("acme", &[], Some("k1"), now()),
            event("globex", &[], Some("k1"), now()),
        ])
        .await
        .unwrap();
    let (original, _) = created(&first[0]);
    assert!(matches!(&first[1], Appended::Duplicate(id) if *id == original));
    assert!(
        matches!(first[2], Appended::Created { .. }),
        "keys are per tenant"
    );
    let later = store
        .append_events(vec![event("acme", &[], Some("k1"), now() + 10)])
        .await
        .unwrap();
    assert!(matches!(&later[0], Appended::Duplicate(id) if *id == original));
}

#[tokio::test]
async fn the_schedule_keeps_due_order_through_page_splits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    // 700 deliveries (pages of 256 fill, split and continue), then every third moved to a
    // pseudo-random later due time.
    let group: Vec<NewEvent> = (0..700)
        .map(|i| event("acme", &[&hook.id], None, now() + i))
        .collect();
    let appended = store.append_events(group).await.unwrap();
    let ids: Vec<DeliveryId> = appended.iter().map(|a| created(a).1[0].clone()).collect();
    let mut expected: Vec<(u64, DeliveryId)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let due = if i % 3 == 0 {
            let moved = now() + 1_000 + (i as u64 * 7919) % 5_000;
            store.requeue("acme", id, moved).await.unwrap().unwrap();
            moved
        } else {
            now() + i as u64
        };
        expected.push((due, id.clone()));
    }
    expected.sort();
    let head = everything_due(&store, &hook.id).await;
    let claimed: Vec<DeliveryId> = head.due.iter().map(|c| c.delivery_id.clone()).collect();
    let mut dues: Vec<u64> = Vec::new();
    for id in &claimed {
        dues.push(
            store
                .delivery("acme", id)
                .await
                .unwrap()
                .unwrap()
                .next_attempt_at
                .unwrap(),
        );
    }
    assert_eq!(claimed.len(), 700);
    assert!(
        dues.windows(2).all(|w| w[0] <= w[1]),
        "claims come in due order"
    );
    assert_eq!(
        claimed.iter().collect::<HashSet<_>>(),
        expected.iter().map(|(_, id)| id).collect::<HashSet<_>>()
    );
    // Finishing every delivery empties the schedule.
    let outcomes = ids
        .iter()
        .map(|id| outcome("acme", id, &hook.id, 1, DeliveryStatus::Delivered, None))
        .collect();
    store.record_attempts(outcomes).await.unwrap();
    let head = everything_due(&store, &hook.id).await;
    assert!(head.due.is_empty() && head.next_due.is_none());
    assert_eq!(
        store.tenant_usage("acme").await.unwrap().pending_deliveries,
        0
    );
}

#[tokio::test]
async fn a_claim_that_skips_earlier_due_times_continues_the_scan_from_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    // 900 deliveries, 40 per due millisecond (many pages start at the same time), in groups
    // so pages split; then every fifth moved to an earlier or later time, and every seventh
    // finished, so page keys are stale lower bounds of what their pages hold.
    let mut ids: Vec<DeliveryId> = Vec::new();
    for chunk in 0..9u64 {
        let group: Vec<NewEvent> = (0..100)
            .map(|i| event("acme", &[&hook.id], None, now() + (chunk * 100 + i) / 40))
            .collect();
        for appended in store.append_events(group).await.unwrap() {
            ids.push(created(&appended).1[0].clone());
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 5 == 0 {
            let due = now() + (i as u64 * 7919) % 30;
            store.requeue("acme", id, due).await.unwrap().unwrap();
        }
    }
    let finished = ids
        .iter()
        .step_by(7)
        .map(|id| outcome("acme", id, &hook.id, 1, DeliveryStatus::Delivered, None))
        .collect();
    store.record_attempts(finished).await.unwrap();
    let none = HashSet::new();
    let whole = everything_due(&store, &hook.id).await.due;
    assert_eq!(whole.len(), ids.len() - ids.len().div_ceil(7));
    let dues: Vec<u64> = whole.iter().map(|c| c.queue_due.unwrap()).collect();
    assert!(
        dues.windows(2).all(|w| w[0] <= w[1]),
        "claims come in due order"
    );
    assert!(
        dues.windows(41).any(|w| w[0] == w[40]),
        "pages start at the same time"
    );
    // From any due time, the rest of the scan from the first entry due then.
    for due in dues.iter().step_by(13) {
        let rest = store
            .claim_due("acme", &hook.id, &none, Some(*due), u64::MAX - 1, 10_000)
            .await
            .unwrap()
            .due;
        let from = dues.partition_point(|d| d < due);
        assert_eq!(rest, whole[from..], "from {due}");
    }
    // As the dispatcher claims: 7 at a time, each claim skipping what is due before the last
    // one claimed and what is in flight; together, the whole scan.
    let mut walked: Vec<Claim> = Vec::new();
    let mut in_flight: HashSet<DeliveryId> = HashSet::new();
    loop {
        let skip = walked.last().and_then(|c| c.queue_due);
        let head = store
            .claim_due("acme", &hook.id, &in_flight, skip, u64::MAX - 1, 7)
            .await
            .unwrap();
        if head.due.is_empty() {
            assert!(head.next_due.is_none());
            break;
        }
        in_flight.extend(head.due.iter().map(|c| c.delivery_id.clone()));
        walked.extend(head.due);
    }
    assert_eq!(walked, whole);
    // What is not yet due waits.
    let later = dues[dues.len() / 2];
    let head = store
        .claim_due("acme", &hook.id, &none, Some(dues[10]), later - 1, 10_000)
        .await
        .unwrap();
    let from = dues.partition_point(|d| *d < dues[10]);
    let until = dues.partition_point(|d| *d < later);
    assert_eq!(head.due, whole[from..until]);
    assert_eq!(head.next_due, Some(later));
}

#[tokio::test]
async fn an_empty_sled_is_rebuilt_from_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keyring();
    let store = open(dir.path(), keys.clone()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let appended = store
        .append_events(
            (0..50)
                .map(|i| event("acme", &[&hook.id], Some(&format!("k{i}")), now() + i))
                .collect(),
        )
        .await
        .unwrap();
    let ids: Vec<DeliveryId> = appended.iter().map(|a| created(a).1[0].clone()).collect();
    store
        .record_attempts(
            ids[..20]
                .iter()
                .map(|id| outcome("acme", id, &hook.id, 1, DeliveryStatus::Delivered, None))
                .collect(),
        )
        .await
        .unwrap();
    store.requeue("acme", &ids[3], now() + 99).await.unwrap();
    let before = snapshot(store.as_ref(), &hook.id).await;
    store.close().await.unwrap();
    drop(store);

    // A data dir with the log and no sled at all: what a crash that lost every sled write
    // would leave.
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("log")).unwrap();
    for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            copy.path().join("log").join(entry.file_name()),
        )
        .unwrap();
    }
    let rebuilt = open(copy.path(), keys).await;
    assert_eq!(snapshot(rebuilt.as_ref(), &hook.id).await, before);
    let again = rebuilt
        .append_events(vec![event("acme", &[], Some("k7"), now() + 500)])
        .await
        .unwrap();
    assert!(
        matches!(again[0], Appended::Duplicate(_)),
        "idempotency keys replayed"
    );
}

#[tokio::test]
async fn a_log_that_lost_its_tail_under_sled_drops_the_lost_events_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keyring();
    let store = open(dir.path(), keys.clone()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let batch = |prefix: &str, n: u64, at: u64| -> Vec<NewEvent> {
        (0..n)
            .map(|i| event("acme", &[&hook.id], Some(&format!("{prefix}{i}")), at + i))
            .collect()
    };
    let kept: Vec<_> = store
        .append_events(batch("a", 20, now()))
        .await
        .unwrap()
        .iter()
        .map(created)
        .collect();
    let segment = dir.path().join("log").join("00000001.seg");
    let synced_len = std::fs::metadata(&segment).unwrap().len();
    let lost: Vec<_> = store
        .append_events(batch("b", 30, now() + 100))
        .await
        .unwrap()
        .iter()
        .map(created)
        .collect();
    store.close().await.unwrap();
    drop(store);

    // What a power loss can leave: sled's pages and checkpoint on disk, the log's tail not.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(synced_len)
        .unwrap();
    let store = open(dir.path(), keys.clone()).await;

    let due = |store: Arc<dyn Store>| {
        let hook = hook.id.clone();
        async move {
            let head = store
                .claim_due("acme", &hook, &HashSet::new(), None, u64::MAX - 1, 1_000)
                .await
                .unwrap();
            head.due
                .into_iter()
                .map(|c| c.delivery_id)
                .collect::<HashSet<_>>()
        }
    };
    let kept_deliveries: HashSet<DeliveryId> = kept.iter().map(|(_, d)| d[0].clone()).collect();
    assert_eq!(
        due(store.clone()).await,
        kept_deliveries,
        "only the kept events' deliveries are due"
    );
    assert_eq!(
        store.tenant_usage("acme").await.unwrap().pending_deliveries,
        20
    );
    for (event, deliveries) in &lost {
        assert!(store.event("acme", event).await.unwrap().is_none());
        assert!(
            store
                .delivery("acme", &deliveries[0])
                .await
                .unwrap()
                .is_none()
        );
    }
    let listed = store
        .list_events("acme", &EventFilter::default(), None, 250)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 20);
    let day = day_of(now());
    let stats = store
        .stats_days("acme", StatsScope::Webhook(&hook.id), day, day + 1)
        .await
        .unwrap();
    let pending: u64 = stats.iter().map(|d| d.counts.pending()).sum();
    assert_eq!(
        pending, 20,
        "the lost deliveries are no longer pending: {stats:?}"
    );

    // A lost event's idempotency key is free again, and no lost id is given out again.
    let again = store
        .append_events(batch("b", 1, now() + 200))
        .await
        .unwrap();
    let (new_event, new_deliveries) = created(&again[0]);
    assert!(lost.iter().all(|(event, _)| *event != new_event));
    let mut expected = kept_deliveries.clone();
    expected.insert(new_deliveries[0].clone());
    assert_eq!(due(store.clone()).await, expected);
    store.close().await.unwrap();
    drop(store);

    // The repair was durable and is not repeated.
    let store = open(dir.path(), keys).await;
    assert_eq!(due(store.clone()).await, expected);
    assert_eq!(
        store.tenant_usage("acme").await.unwrap().pending_deliveries,
        21
    );
}

/// What a client could observe of a store, as text.
async fn snapshot(store: &dyn Store, hook: &WebhookId) -> String {
    let deliveries = store
        .list_deliveries("acme", &DeliveryFilter::default(), None, 250)
        .await
        .unwrap();
    let events = store
        .list_events("acme", &EventFilter::default(), None, 250)
        .await
        .unwrap();
    let day = day_of(now());
    let stats = store
        .stats_days("acme", StatsScope::Webhook(hook), day, day)
        .await
        .unwrap();
    let head = store
        .claim_due("acme", hook, &HashSet::new(), None, u64::MAX - 1, 1_000)
        .await
        .unwrap();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        deliveries
            .items
            .iter()
            .map(|d| (&d.id, d.status, d.attempts, d.next_attempt_at))
            .collect::<Vec<_>>(),
        events.items.iter().map(|e| &e.id).collect::<Vec<_>>(),
        stats,
        head.due,
        store.tenant_usage("acme").await.unwrap(),
        store.webhook_health("acme", hook).await.unwrap(),
        store.webhook("acme", hook).await.unwrap().map(|w| w.url)
    )
}

#[tokio::test]
async fn deleting_a_webhook_fails_its_queued_deliveries_in_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keyring();
    let store = open(dir.path(), keys.clone()).await;
    let (gone, kept) = (webhook(), webhook());
    store.insert_webhook("acme", &gone).await.unwrap();
    store.insert_webhook("acme", &kept).await.unwrap();
    let appended = store
        .append_events(
            (0..300)
                .map(|i| event("acme", &[&gone.id, &kept.id], None, now() + i))
                .collect(),
        )
        .await
        .unwrap();
    assert!(store.delete_webhook("acme", &gone.id).await.unwrap());
    assert!(!store.delete_webhook("acme", &gone.id).await.unwrap());
    let (_, first) = created(&appended[0]);
    let failed = store.delivery("acme", &first[0]).await.unwrap().unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("webhook_deleted"));
    let usage = store.tenant_usage("acme").await.unwrap();
    assert_eq!(
        usage.pending_deliveries, 300,
        "only the kept webhook's remain"
    );
    store.close().await.unwrap();
    drop(store);
    let reopened = open(dir.path(), keys).await;
    assert!(reopened.webhook("acme", &gone.id).await.unwrap().is_none());
    let head = reopened
        .claim_due("acme", &gone.id, &HashSet::new(), None, u64::MAX - 1, 1_000)
        .await
        .unwrap();
    assert!(head.due.is_empty());
}

#[tokio::test]
async fn a_purge_takes_finished_deliveries_and_empty_events_and_keeps_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let appended = store
        .append_events(vec![
            event("acme", &[&hook.id], Some("old"), now()),
            event("acme", &[&hook.id], None, now() + 1),
            event("acme", &[&hook.id], None, now() + 10_000),
        ])
        .await
        .unwrap();
    let (old_event, old) = created(&appended[0]);
    let (_, queued) = created(&appended[1]);
    store
        .record_attempts(vec![outcome(
            "acme",
            &old[0],
            &hook.id,
            1,
            DeliveryStatus::Delivered,
            None,
        )])
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let other = store
        .purge(Some("globex"), None, now() + 5_000, &stop)
        .await
        .unwrap();
    assert!(other.is_empty(), "another tenant's purge touches nothing");
    let purged = store
        .purge(Some("acme"), None, now() + 5_000, &stop)
        .await
        .unwrap();
    assert_eq!(
        (purged.events, purged.deliveries, purged.attempts),
        (1, 1, 1)
    );
    assert!(store.event("acme", &old_event).await.unwrap().is_none());
    assert!(store.delivery("acme", &old[0]).await.unwrap().is_none());
    assert!(store.attempts("acme", &old[0]).await.unwrap().is_empty());
    assert!(
        store.delivery("acme", &queued[0]).await.unwrap().is_some(),
        "a queued delivery stays"
    );
    let usage = store.tenant_usage("acme").await.unwrap();
    assert_eq!((usage.events, usage.pending_deliveries), (2, 2));
    // The purged event's key is free again; the payload bytes are gone from the log.
    let again = store
        .append_events(vec![event("acme", &[], Some("old"), now() + 20_000)])
        .await
        .unwrap();
    assert!(matches!(again[0], Appended::Created { .. }));
    assert_eq!(
        store
            .purge(Some("acme"), None, now() + 5_000, &stop)
            .await
            .unwrap()
            .events,
        0
    );
}

#[tokio::test]
async fn forged_and_foreign_ids_read_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let appended = store
        .append_events(vec![event("acme", &[&hook.id], None, now())])
        .await
        .unwrap();
    let (event_id, deliveries) = created(&appended[0]);
    assert!(store.event("globex", &event_id).await.unwrap().is_none());
    assert!(
        store
            .delivery("globex", &deliveries[0])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .requeue("globex", &deliveries[0], now())
            .await
            .unwrap()
            .is_none()
    );
    // Ids of the right shape pointing anywhere: never a panic, never a record.
    for _ in 0..200 {
        assert!(
            store
                .event("acme", &EventId::new())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .delivery("acme", &DeliveryId::new())
                .await
                .unwrap()
                .is_none()
        );
    }
    let hex = &event_id.as_str()[4..];
    for shift in 1..64u32 {
        let value = u128::from_str_radix(hex, 16).unwrap() ^ (1u128 << (18 + shift % 32));
        if let Some(id) = EventId::parse(&format!("evt_{value:032x}")) {
            assert!(store.event("acme", &id).await.unwrap().is_none());
        }
    }
}

/// An attempt whose captured body is its event's delivered body keeps a reference, not a
/// copy: the payload is in the log once, and reading the attempt gives the body back whole.
/// A body a plugin changed is kept as sent.
#[tokio::test]
async fn an_attempt_sending_the_events_own_body_does_not_copy_the_payload_into_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), keyring()).await;
    let hook = webhook();
    store.insert_webhook("acme", &hook).await.unwrap();
    let marker = "payload-marker-".repeat(64);
    let mut new = event("acme", &[&hook.id], None, now());
    new.payload = RawValue::from_string(format!(r#"{{"note":"{marker}"}}"#)).unwrap();
    let appended = store.append_events(vec![new]).await.unwrap();
    let (event_id, deliveries) = created(&appended[0]);
    let body = store
        .event("acme", &event_id)
        .await
        .unwrap()
        .unwrap()
        .delivered_body();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let sent = |body: &str| crate::store::SentRequest {
        url: "https://receiver.example/hook".into(),
        method: "POST".into(),
        headers: Vec::new(),
        body: body.to_string(),
        body_base64: false,
        body_bytes: body.len() as u64,
        body_truncated: false,
    };
    let mut first = outcome(
        "acme",
        &deliveries[0],
        &hook.id,
        1,
        DeliveryStatus::Failed,
        Some(now() + 1),
    );
    first.attempt.request = Some(sent(&body));
    first.body_is_event_body = true;
    let changed = body.replace("payload-marker", "PLUGIN-CHANGED");
    let mut second = outcome(
        "acme",
        &deliveries[0],
        &hook.id,
        2,
        DeliveryStatus::Delivered,
        None,
    );
    second.attempt.request = Some(sent(&changed));
    store.record_attempts(vec![first]).await.unwrap();
    store.record_attempts(vec![second]).await.unwrap();
    store.flush().await.unwrap();

    let attempts = store.attempts("acme", &deliveries[0]).await.unwrap();
    let bodies: Vec<&str> = attempts
        .iter()
        .map(|a| a.request.as_ref().unwrap().body.as_str())
        .collect();
    assert_eq!(bodies, [body.as_str(), changed.as_str()]);

    let mut log = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
        log.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let count = |needle: &str| {
        log.windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
    };
    assert_eq!(count(&marker), 1, "the payload is written once");
    let changed_marker = marker.replace("payload-marker", "PLUGIN-CHANGED");
    assert_eq!(count(&changed_marker), 1, "a changed body is kept as sent");
}
