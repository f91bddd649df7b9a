//! One attempt of one delivery, as typed stages:
//!
//! 1. **load** ([`load`]): the delivery, its webhook and event; a delivery that cannot be tried
//!    (gone, its webhook deleted or paused, its tenant out of config) is settled or parked here.
//! 2. **prepare** (`prepare.rs`): render, plugin chain, sign → a request to send, or a [`Tried`]
//!    that ends the attempt without sending.
//! 3. **send** ([`send`]): the only stage that holds a delivery permit (`permits.rs`), taken
//!    just before the request goes out and released as soon as the answer is read.
//! 4. **judge** (`judge.rs`): what the try means for the delivery ([`Verdict`]); when the
//!    receiver answered and the webhook's chain has `on-response` plugins, they are asked first
//!    ([`on_response`]) and their decision goes to the judge, which applies it within limits.
//! 5. **record** ([`record`]): attempt log, delivery state and next schedule entry in one write
//!    (through the recorder's group commit). The webhook's slot was given back when the send
//!    ended (`dispatcher::Slot::free`): the delivery stays claimed until this write is done, but
//!    the webhook's next delivery need not wait for it.
//! 6. **consequences** (`consequences.rs`): operational events and webhook health.
//!
//! Test sends (`POST /v1/webhooks/{id}/test`) run prepare, send and the `on-response` plugins,
//! outside the queue; a real attempt's prepare also feeds a plugin candidate's shadow run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{Instrument, debug, info, info_span, warn};

use super::client::HttpOutcome;
use super::consequences::{self, Recorded};
use super::judge::{self, AttemptError, AttemptResult, ResponseVerdict, Tried, Verdict};
use super::operational::DeliveryFacts;
use super::prepare::{self, AttemptInput, Preparation, Prepared};
use super::retry::{RetryPolicy, StatusClass, classify_status};
use super::{DeliveryContext, sanitize_snippet};
use crate::config::{Config, TenantConfig};
use crate::ids::{AttemptId, DeliveryId, WebhookId, now_ms};
use crate::outbound::OutboundRequest;
use crate::plugin::{ChainStep, PluginResponse};
use crate::store::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryRecord, DeliveryStatus, DeliveryUpdate,
    DeliveryWithEvent, EventRecord, StoreError, WebhookRecord, WebhookStatus, WorkListener,
};

/// How long a delivery of a tenant that vanished from config waits before it is looked at again.
const TENANT_MISSING_RECHECK: Duration = Duration::from_secs(60);
/// How long a delivery whose attempt failed on the store waits before it is claimed again.
const STORE_FAILURE_PAUSE: Duration = Duration::from_secs(5);
/// How long a schedule entry naming a delivery the store cannot read (or that is no longer
/// queued) is left aside before it is looked at again.
const STALE_ENTRY_PAUSE: Duration = Duration::from_secs(60);

/// Runs one attempt of a claimed delivery. Failures of hookd itself (store errors) are
/// logged; the delivery stays queued and is tried again.
pub async fn run(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook_id: &WebhookId,
    claim: &Claim,
    mut slot: super::dispatcher::Slot,
) {
    let span =
        info_span!("attempt", tenant, webhook_id = %webhook_id, delivery_id = %claim.delivery_id);
    async {
        match try_run(ctx, tenant, webhook_id, claim, &mut slot).await {
            Ok(Ran::Done) => slot.end_claim(),
            Ok(Ran::Stale) => {
                warn!(
                    pause_s = STALE_ENTRY_PAUSE.as_secs(),
                    "the schedule names a delivery that cannot be read or is not queued; \
                     it is left aside"
                );
                slot.set_aside(STALE_ENTRY_PAUSE);
            }
            Err(err) => {
                warn!(
                    error = %err,
                    pause_s = STORE_FAILURE_PAUSE.as_secs(),
                    "attempt could not be completed; it stays queued"
                );
                slot.set_aside(STORE_FAILURE_PAUSE);
            }
        }
    }
    .instrument(span)
    .await
}

/// How an attempt that returned without a store failure ended.
enum Ran {
    /// Tried and recorded, or settled, parked or requeued on purpose.
    Done,
    /// The delivery claimed from the schedule cannot be read or is no longer queued.
    Stale,
}

async fn try_run(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook_id: &WebhookId,
    claim: &Claim,
    slot: &mut super::dispatcher::Slot,
) -> Result<Ran, StoreError> {
    let delivery_id = &claim.delivery_id;
    let loaded = match load(ctx, tenant, webhook_id, delivery_id).await? {
        Load::Ready(loaded) => loaded,
        Load::Done => return Ok(Ran::Done),
        Load::Stale => return Ok(Ran::Stale),
    };
    let tenant = loaded.tenant();
    let started_at = now_ms();
    observe_lag(ctx, &loaded, started_at);
    let input = AttemptInput {
        tenant,
        webhook: &loaded.webhook,
        event: &loaded.event,
        webhook_id_header: delivery_id.as_str(),
        attempt: loaded.delivery.attempts + 1,
        now_ms: started_at,
    };
    let preparation = prepare::prepare_attempt(ctx, &input).await;
    let Preparation {
        prepared,
        mut plugin_logs,
        chain_time,
        body_as_rendered,
        steps,
    } = preparation;
    let (tried, sent, for_plugins) = match prepared {
        Prepared::Send(request) => {
            let sent = super::capture::capture(&request, tenant.delivery.max_request_capture_bytes);
            // Kept only when a plugin will read it after the send (the body is shared, not
            // copied).
            let for_plugins = (!steps.is_empty()
                && ctx.plugins.handles_responses(&tenant.id, &steps))
            .then(|| request.clone());
            let outcome = send(ctx, tenant, request, input.timeout()).await;
            (Tried::Sent(outcome), Some(sent), for_plugins)
        }
        Prepared::NotSent(tried) => (tried, None, None),
    };
    // The receiver has answered: its slot may serve the webhook's next delivery.
    slot.free();
    let response_verdict = match for_plugins {
        Some(request) => on_response(ctx, &input, &steps, request, &tried, &mut plugin_logs).await,
        None => None,
    };
    let policy = RetryPolicy::for_webhook(&tenant.delivery, &loaded.webhook);
    let verdict = judge::judge(&tried, &policy, input.attempt, response_verdict.as_ref());
    let mut attempt = attempt_record(
        &loaded,
        &input,
        &tried,
        (&verdict, response_verdict.as_ref()),
        plugin_logs,
        chain_time,
    );
    let body_is_event_body = body_as_rendered && sent.is_some();
    attempt.request = sent;
    let facts = delivery_facts(&loaded, &attempt, &tried, &verdict);
    record(
        ctx,
        &loaded,
        claim,
        (attempt, body_is_event_body),
        &verdict,
        tried.exchange_time(),
    )
    .await?;
    // Recorded: the claim ends; consequences run outside it.
    slot.end_claim();
    consequences::apply(
        ctx,
        Recorded {
            tenant,
            webhook: &loaded.webhook,
            delivery: &loaded.delivery,
            facts,
            tried: &tried,
            verdict: &verdict,
        },
    )
    .await;
    Ok(Ran::Done)
}

/// Notes how long after it was due this attempt starts (`lag.rs`). A delivery held by its
/// webhook's pause (or disable) was not late while held: it counts from the change that
/// released it (the webhook's last update) if that came after its due time, or a resumed
/// backlog would read as lag and refuse the whole tenant's ingest (`max_delivery_lag_secs`).
fn observe_lag(ctx: &DeliveryContext, loaded: &Loaded, started_at: u64) {
    let tenant = loaded.tenant_id.as_str();
    let due = loaded.delivery.next_attempt_at.unwrap_or(started_at);
    let lag_ms = started_at.saturating_sub(due.max(loaded.webhook.updated_at));
    ctx.lag.observe(tenant, lag_ms);
    ctx.metrics
        .delivery_lag(tenant, Duration::from_millis(lag_ms));
}

/// What the load stage found: everything the later stages read.
struct Loaded {
    config: std::sync::Arc<Config>,
    tenant_id: String,
    delivery: DeliveryRecord,
    webhook: SharedWebhook,
    event: EventRecord,
}

/// The attempt's webhook, read in place in its tenant's shared list of webhooks (the store's
/// cache): an attempt never copies the record.
struct SharedWebhook {
    webhooks: std::sync::Arc<Vec<WebhookRecord>>,
    index: usize,
}

impl SharedWebhook {
    fn find(webhooks: std::sync::Arc<Vec<WebhookRecord>>, id: &WebhookId) -> Option<Self> {
        let index = webhooks.iter().position(|webhook| &webhook.id == id)?;
        Some(SharedWebhook { webhooks, index })
    }
}

impl std::ops::Deref for SharedWebhook {
    type Target = WebhookRecord;

    fn deref(&self) -> &WebhookRecord {
        &self.webhooks[self.index]
    }
}

impl Loaded {
    fn tenant(&self) -> &TenantConfig {
        self.config
            .tenant(&self.tenant_id)
            .expect("load checked the tenant is in this config")
    }
}

/// What the load stage found.
enum Load {
    Ready(Box<Loaded>),
    /// Nothing to try: settled or parked here because its webhook, event or tenant is gone or
    /// inactive.
    Done,
    /// The delivery is gone or no longer queued (the schedule disagrees with it).
    Stale,
}

/// The load stage: the delivery, its webhook and event, or why there is nothing to try.
async fn load(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook_id: &WebhookId,
    delivery_id: &DeliveryId,
) -> Result<Load, StoreError> {
    let store = &ctx.store;
    // The claim is the dispatcher's; the record stays `pending` until the outcome is
    // recorded, so an attempt costs one write, not two.
    let Some(DeliveryWithEvent { delivery, event }) =
        store.delivery_with_event(tenant, delivery_id).await?
    else {
        return Ok(Load::Stale);
    };
    if !delivery.status.is_queued() {
        return Ok(Load::Stale);
    }
    let config = ctx.config.current();
    if config.tenant(tenant).is_none() {
        // The tenant was removed from config; its deliveries wait (it may come back).
        debug!("tenant not in config; delivery waits");
        let recheck = now_ms() + TENANT_MISSING_RECHECK.as_millis() as u64;
        store.requeue(tenant, delivery_id, recheck).await?;
        return Ok(Load::Done);
    }
    let Some(webhook) = SharedWebhook::find(store.webhooks_of(tenant).await?, webhook_id) else {
        store
            .settle(
                tenant,
                delivery_id,
                DeliveryStatus::Failed,
                "webhook_deleted",
            )
            .await?;
        return Ok(Load::Done);
    };
    let event = match event {
        Ok(event) => event,
        // Damaged on disk (a checksum fails): it can never be sent, so its delivery fails
        // like one whose event is gone, rather than being tried again forever.
        Err(StoreError::Corrupt(reason)) => {
            warn!(
                reason,
                "the event's stored bytes are damaged; the delivery fails"
            );
            None
        }
        Err(err) => return Err(err),
    };
    let Some(event) = event else {
        store
            .settle(tenant, delivery_id, DeliveryStatus::Failed, "event_missing")
            .await?;
        return Ok(Load::Done);
    };
    if webhook.status != WebhookStatus::Active {
        // Parked: the dispatcher learns the webhook is not active and stops claiming from it.
        ctx.dispatch.webhook_changed(tenant, webhook_id);
        return Ok(Load::Done);
    }
    Ok(Load::Ready(Box::new(Loaded {
        config,
        tenant_id: tenant.to_string(),
        delivery,
        webhook,
        event,
    })))
}

/// The send stage: the only time an attempt holds one of the engine's delivery permits. It
/// waits for the permit here (after its plugin chain, never during it) and gives it back as
/// soon as the answer is read, before the outcome is recorded.
async fn send(
    ctx: &DeliveryContext,
    tenant: &TenantConfig,
    request: OutboundRequest,
    timeout: Duration,
) -> HttpOutcome {
    let _permit = ctx
        .permits
        .acquire(&tenant.id, tenant.quotas.delivery_weight)
        .await;
    ctx.client
        .send(request, timeout, tenant.delivery.max_response_body_bytes)
        .await
}

/// Asks the chain's `on-response` plugins what the receiver's answer means: their decision for
/// the judge, if one decided; their log lines are added to the attempt's. Only for answered
/// tries; a plugin failing here leaves the default rules in force (the host logs why).
async fn on_response(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
    steps: &[ChainStep],
    sent: OutboundRequest,
    tried: &Tried,
    plugin_logs: &mut Vec<String>,
) -> Option<ResponseVerdict> {
    let Tried::Sent(HttpOutcome::Response {
        status,
        body,
        body_truncated,
        headers,
        ..
    }) = tried
    else {
        return None;
    };
    let request = input.plugin_request(sent, Vec::new());
    let response = PluginResponse {
        status: *status,
        headers: headers.clone(),
        body: body.to_vec(),
        body_truncated: *body_truncated,
    };
    let run = ctx
        .plugins
        .run_on_response(
            &input.tenant.id,
            steps,
            request,
            response,
            &input.tenant.plugins,
        )
        .await;
    ctx.metrics.plugin_calls(&input.tenant.id, &run.calls);
    plugin_logs.extend(run.logs.iter().map(|log| {
        debug!(plugin = %log.plugin, level = log.level.as_str(), "plugin log: {}", log.message);
        format!("{} [{}] {}", log.plugin, log.level.as_str(), log.message)
    }));
    let (plugin, decision) = run.decision?;
    Some(ResponseVerdict::from_plugin(&plugin, decision))
}

/// The attempt log's `error_code`: the try's own error, or `response_verdict` when a plugin
/// failed an answer hookd would have called delivered.
fn error_code(tried: &Tried, verdict: &Verdict) -> Option<&'static str> {
    tried.error().map(AttemptError::code).or_else(|| {
        (verdict.verdict_by.is_some() && verdict.result != AttemptResult::Delivered)
            .then_some("response_verdict")
    })
}

/// The attempt log entry of a judged try (with the response plugin's decision, if one made
/// it).
fn attempt_record(
    loaded: &Loaded,
    input: &AttemptInput<'_>,
    tried: &Tried,
    (verdict, response_verdict): (&Verdict, Option<&ResponseVerdict>),
    plugin_logs: Vec<String>,
    chain_time: Duration,
) -> AttemptRecord {
    let (status_code, error_message, snippet, latency) = match tried {
        Tried::Sent(
            outcome @ HttpOutcome::Response {
                status, latency, ..
            },
        ) => (
            Some(*status),
            response_verdict.map(ResponseVerdict::log_message),
            Some(sanitize_snippet(&outcome.snippet())),
            *latency,
        ),
        Tried::Sent(HttpOutcome::Failed {
            message, latency, ..
        }) => (None, Some(message.clone()), None, *latency),
        Tried::Filtered { plugin } => (
            None,
            Some(format!("dropped by plugin `{plugin}`")),
            None,
            chain_time,
        ),
        Tried::PluginFailed { message, .. } => (None, Some(message.clone()), None, chain_time),
    };
    let next_attempt_at = verdict
        .retry_in
        .map(|delay| now_ms() + delay.as_millis() as u64);
    AttemptRecord {
        id: AttemptId::new(),
        delivery_id: loaded.delivery.id.clone(),
        webhook_id: loaded.webhook.id.clone(),
        attempt: input.attempt,
        started_at: input.now_ms,
        url: loaded.webhook.url.clone(),
        latency_ms: latency.as_millis() as u64,
        result: verdict.result.as_str().to_string(),
        status_code,
        error_code: error_code(tried, verdict).map(str::to_string),
        error_message,
        response_snippet: snippet,
        next_attempt_at,
        plugin_logs,
        request: None,
        verdict_by: verdict.verdict_by.clone(),
    }
}

fn delivery_facts(
    loaded: &Loaded,
    attempt: &AttemptRecord,
    tried: &Tried,
    verdict: &Verdict,
) -> DeliveryFacts {
    DeliveryFacts {
        delivery_id: loaded.delivery.id.to_string(),
        webhook_id: loaded.webhook.id.clone(),
        webhook_url: loaded.webhook.url.clone(),
        event_id: loaded.event.id.clone(),
        event_type: loaded.event.event_type.clone(),
        attempt: attempt.attempt,
        status_code: attempt.status_code,
        error_code: error_code(tried, verdict),
        next_attempt_at: attempt.next_attempt_at.map(crate::ids::rfc3339),
    }
}

/// The record stage: the attempt log entry, the delivery's new state and its next schedule
/// entry, written together through the recorder.
async fn record(
    ctx: &DeliveryContext,
    loaded: &Loaded,
    claim: &Claim,
    (attempt, body_is_event_body): (AttemptRecord, bool),
    verdict: &Verdict,
    exchange_time: Option<Duration>,
) -> Result<(), StoreError> {
    let tenant = loaded.tenant_id.as_str();
    let result = verdict.result;
    let error_code = attempt.error_code.clone();
    let update = DeliveryUpdate {
        status: result.delivery_status(),
        next_attempt_at: attempt.next_attempt_at,
        filtered_by: verdict.filtered_by.clone(),
    };
    let (status_code, number) = (attempt.status_code, attempt.attempt);
    ctx.recorder
        .record(AttemptOutcome {
            tenant: tenant.to_string(),
            lease: claim.lease,
            attempt,
            update,
            body_is_event_body,
        })
        .await?;
    ctx.metrics
        .attempt_finished(tenant, result.as_str(), error_code.as_deref());
    if let Some(exchange_time) = exchange_time {
        ctx.metrics.delivery_latency(tenant, exchange_time);
    }
    info!(
        attempt = number,
        status = status_code,
        error = error_code.as_deref(),
        result = result.as_str(),
        "attempt finished"
    );
    Ok(())
}

/// Result of `POST /v1/webhooks/{id}/test`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestSendOutcome {
    pub delivered: bool,
    pub webhook_id_header: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub response_snippet: Option<String>,
    /// Who decided instead of hookd's default rules: `plugin:<name>` when an `on-response`
    /// plugin of the chain made a decision about the answer (reported, not applied: a test
    /// send is never retried and never disables the webhook).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "plugin:body-says-ok")]
    pub verdict_by: Option<String>,
    /// That plugin's decision: `delivered`, `retry`, `fail` or `disable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "retry")]
    pub response_decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugin_logs: Vec<String>,
}

/// Sends a sample event to a webhook now, through its plugin chain and its `on-response`
/// plugins, outside the queue: nothing is stored or retried. It takes a delivery permit like
/// any attempt.
/// Test sends in flight per webhook on this node. A test send holds one of the webhook's
/// `max_in_flight` here (the dispatcher's slots are for queued deliveries), so a receiver that
/// asked for one request at a time does not get hundreds from a script pressing "test".
#[derive(Debug, Default, Clone)]
pub struct TestSendSlots(Arc<std::sync::Mutex<HashMap<WebhookId, usize>>>);

/// One test send's slot, given back on drop.
#[derive(Debug)]
pub struct TestSendSlot {
    slots: TestSendSlots,
    webhook: WebhookId,
}

impl TestSendSlots {
    /// A slot of `webhook`, unless `cap` test sends to it are already in flight.
    pub fn take(&self, webhook: &WebhookId, cap: usize) -> Option<TestSendSlot> {
        let mut in_flight = self.0.lock().expect("test send slots");
        let count = in_flight.entry(webhook.clone()).or_insert(0);
        if *count >= cap.max(1) {
            return None;
        }
        *count += 1;
        Some(TestSendSlot {
            slots: self.clone(),
            webhook: webhook.clone(),
        })
    }
}

impl Drop for TestSendSlot {
    fn drop(&mut self) {
        let mut in_flight = self.slots.0.lock().expect("test send slots");
        if let Some(count) = in_flight.get_mut(&self.webhook) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.webhook);
            }
        }
    }
}

pub async fn test_send(
    ctx: &DeliveryContext,
    tenant: &TenantConfig,
    webhook: &WebhookRecord,
    event: &EventRecord,
) -> TestSendOutcome {
    let webhook_id_header = format!(
        "{}test_{}",
        DeliveryId::PREFIX,
        uuid::Uuid::now_v7().simple()
    );
    let input = AttemptInput {
        tenant,
        webhook,
        event,
        webhook_id_header: &webhook_id_header,
        attempt: 1,
        now_ms: now_ms(),
    };
    let preparation = prepare::prepare(ctx, &input).await;
    let mut outcome = TestSendOutcome {
        delivered: false,
        webhook_id_header: webhook_id_header.clone(),
        status_code: None,
        latency_ms: preparation.chain_time.as_millis() as u64,
        error_code: None,
        error_message: None,
        response_snippet: None,
        plugin_logs: preparation.plugin_logs,
        verdict_by: None,
        response_decision: None,
    };
    let steps = preparation.steps;
    let (tried, for_plugins) = match preparation.prepared {
        Prepared::Send(request) => {
            let for_plugins = ctx
                .plugins
                .handles_responses(&tenant.id, &steps)
                .then(|| request.clone());
            let outcome = send(ctx, tenant, request, input.timeout()).await;
            (Tried::Sent(outcome), for_plugins)
        }
        Prepared::NotSent(tried) => (tried, None),
    };
    let response_verdict = match for_plugins {
        Some(sent) => {
            let logs = &mut outcome.plugin_logs;
            on_response(ctx, &input, &steps, sent, &tried, logs).await
        }
        None => None,
    };
    outcome.error_code = tried.error().map(|e| e.code().to_string());
    match tried {
        Tried::Sent(
            ref answer @ HttpOutcome::Response {
                status, latency, ..
            },
        ) => {
            outcome.delivered = classify_status(status) == StatusClass::Delivered;
            outcome.status_code = Some(status);
            outcome.latency_ms = latency.as_millis() as u64;
            outcome.response_snippet = Some(sanitize_snippet(&answer.snippet()));
        }
        Tried::Sent(HttpOutcome::Failed {
            message, latency, ..
        }) => {
            outcome.latency_ms = latency.as_millis() as u64;
            outcome.error_message = Some(message);
        }
        Tried::Filtered { plugin } => {
            outcome.error_code = Some("filtered".into());
            outcome.error_message = Some(format!("dropped by plugin `{plugin}`"));
        }
        Tried::PluginFailed { message, .. } => outcome.error_message = Some(message),
    }
    if let Some(verdict) = response_verdict {
        report_response_verdict(&mut outcome, &verdict);
    }
    outcome
}

/// A test send's outcome with an `on-response` plugin's decision: delivered or not as the
/// plugin says, and what it decided in `error_message`.
fn report_response_verdict(outcome: &mut TestSendOutcome, verdict: &ResponseVerdict) {
    let (decision, delivered) = match verdict.decision {
        judge::ResponseDecision::Delivered => ("delivered", true),
        judge::ResponseDecision::Retry { .. } => ("retry", false),
        judge::ResponseDecision::Fail { .. } => ("fail", false),
        judge::ResponseDecision::Disable { .. } => ("disable", false),
    };
    outcome.delivered = delivered;
    outcome.verdict_by = Some(verdict.by.clone());
    outcome.response_decision = Some(decision);
    // A test send never disables the webhook: its message says what an attempt would do.
    outcome.error_message = Some(match &verdict.decision {
        judge::ResponseDecision::Disable { reason } => format!(
            "{} would disable the webhook (not applied to a test send): {reason}",
            verdict.by
        ),
        _ => verdict.log_message(),
    });
    if !delivered && outcome.error_code.is_none() {
        outcome.error_code = Some("response_verdict".into());
    }
}
