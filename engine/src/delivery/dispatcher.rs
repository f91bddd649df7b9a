//! The dispatcher: decides which queued deliveries run now.
//!
//! Each webhook has a durable queue in the store (entries ordered by due time). The dispatcher
//! keeps, per webhook, the set of deliveries it has claimed, how many of them hold one of the
//! webhook's slots, and one wake-up time. A **slot** is the webhook's in-flight place
//! (`max_in_flight`): an attempt holds it from its claim until the receiver has answered (or
//! the attempt ended without sending), not while its outcome is written — the claim alone
//! keeps the delivery from being claimed twice until the outcome is recorded, and at most
//! [`CLAIMS_PER_SLOT`] × `max_in_flight` claims of a webhook may be open at once, so a slow
//! store holds back new attempts instead of piling up outcomes in memory. Where claims live
//! only in the process (sled), a claim takes up to `max_in_flight` more deliveries than it
//! starts and keeps them ready, so a freed slot usually starts the next one without a scan of
//! the store (those few come on top of the cap, which bounds what is started and unrecorded).
//! It starts attempts while the webhook is under its in-flight cap and rate limit and its
//! tenant under the tenant's cap on attempts in progress ([`TENANT_CAP_FACTOR`] × `[delivery]
//! max_in_flight`: a tenant alone can fill every delivery permit even while some of its
//! attempts wait in its plugin queue). Attempts in progress wait for their plugin slot and
//! their delivery permit themselves (`permits.rs` shares the permits fairly between tenants);
//! the per-tenant cap only bounds how much of a tenant's backlog is in memory at once, and it
//! is per tenant so one tenant's hung attempts never keep another's from starting. A queue entry is removed only when its attempt's outcome is
//! recorded, so claims live only in memory: sled admits one process per data dir, and after a
//! crash every unfinished claim is simply due again (same delivery id, so the same
//! `webhook-id`). Work per wake-up is bounded by the webhook's cap, never by its backlog, so
//! one webhook's backlog or slowness never delays another's deliveries. An attempt that ends
//! without an outcome because the store failed, or because the schedule named a delivery the
//! store cannot read, sets its delivery aside for a while ([`Slot::set_aside`]) instead of
//! having it claimed again at once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::DeliveryContext;
use super::attempt;
use crate::ids::{DeliveryId, WebhookId, now_ms};
use crate::store::{Claim, WebhookStatus, WorkListener};

/// A tenant may have this many times `[delivery] max_in_flight` attempts in progress.
pub const TENANT_CAP_FACTOR: usize = 2;

/// Longest a queue's claims skip its head ([`Resume`]) before one claim scans from the head
/// again: a bound on how late an entry put before the resume point is seen, should some write
/// ever fail to announce it.
const RESUME_FOR_MS: u64 = 1_000;
/// Fewest open claims at which a claim skips the head ([`Resume`]): below it, walking past
/// them (one schedule page on sled) costs no more than finding where to start, so a webhook at
/// the default `max_in_flight` (8 × 8 claims at most) always scans from the head.
const RESUME_MIN_CLAIMS: usize = 64;

/// A webhook may have this many times its `max_in_flight` deliveries claimed at once: those
/// sending plus those whose outcome is being recorded. A claim lives for the send plus the
/// outcome's write (the recorder's linger and a store group, ~3 ms under load), so this bounds
/// one webhook's deliveries to about `CLAIMS_PER_SLOT × max_in_flight / 3 ms`: at 4 (32 claims
/// by default) that was ~9k/s, below what ingest accepts on a slow machine, and the deliveries
/// trailed (s1 keeps pace 88-95 %, e2e p50 144-369 ms); at 8 they keep pace (100 %, 5-11 ms).
pub const CLAIMS_PER_SLOT: usize = 8;

type QueueKey = (String, WebhookId);

#[derive(Debug)]
enum DispatchMsg {
    /// A delivery of this webhook is due at `due_ms`.
    Enqueued {
        tenant: String,
        webhook: WebhookId,
        due_ms: u64,
    },
    /// An attempt gave back its webhook's slot (its send is over).
    SlotFreed { tenant: String, webhook: WebhookId },
    /// An attempt finished (whatever its outcome): its claim ends. With `set_aside_ms`, the
    /// delivery is not claimed again before that many ms have passed. `entry_moved`: the store
    /// took the delivery's queue entry out or put it elsewhere (and told the dispatcher if it
    /// is due again); otherwise the entry may still be where it was claimed.
    Completed {
        tenant: String,
        webhook: WebhookId,
        delivery: DeliveryId,
        set_aside_ms: Option<u64>,
        entry_moved: bool,
    },
    /// The webhook was created, edited, disabled or deleted.
    WebhookChanged { tenant: String, webhook: WebhookId },
    /// The configuration was reloaded: per-webhook defaults may have changed.
    ConfigChanged,
}

/// Cheap handle for telling the dispatcher about new work. The store holds one as its
/// [`WorkListener`]: the write that makes work due tells the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchHandle(mpsc::UnboundedSender<DispatchMsg>);

impl WorkListener for DispatchHandle {
    fn due(&self, tenant: &str, webhook: &WebhookId, due_ms: u64) {
        let _ = self.0.send(DispatchMsg::Enqueued {
            tenant: tenant.to_string(),
            webhook: webhook.clone(),
            due_ms,
        });
    }

    fn webhook_changed(&self, tenant: &str, webhook: &WebhookId) {
        let _ = self.0.send(DispatchMsg::WebhookChanged {
            tenant: tenant.to_string(),
            webhook: webhook.clone(),
        });
    }
}

impl DispatchHandle {
    pub fn config_changed(&self) {
        let _ = self.0.send(DispatchMsg::ConfigChanged);
    }

    fn slot_freed(&self, tenant: String, webhook: WebhookId) {
        let _ = self.0.send(DispatchMsg::SlotFreed { tenant, webhook });
    }

    fn completed(
        &self,
        tenant: String,
        webhook: WebhookId,
        delivery: DeliveryId,
        set_aside_ms: Option<u64>,
        entry_moved: bool,
    ) {
        let _ = self.0.send(DispatchMsg::Completed {
            tenant,
            webhook,
            delivery,
            set_aside_ms,
            entry_moved,
        });
    }
}

/// Per-webhook dispatch state.
struct QueueState {
    /// Claimed and not yet recorded (sending, or their outcome being written).
    claimed: HashSet<DeliveryId>,
    /// How many of the claimed hold one of the webhook's slots.
    sending: usize,
    /// Settings read from the webhook record; `None` until loaded or after a change.
    settings: Option<QueueSettings>,
    /// The wake-up registered in `timers`, if any.
    wake_at: Option<u64>,
    /// Waiting for room under its tenant's cap.
    waiting_for_room: bool,
    /// Deliveries not to claim before the given time (ms): their last attempt ended without
    /// an outcome (see [`Slot::set_aside`]).
    set_aside: HashMap<DeliveryId, u64>,
    /// Where the next claim may start, instead of walking past every open claim at the head.
    resume: Option<Resume>,
    /// Claimed ahead and not started yet, oldest first (only where claims are local to the
    /// process, see [`Store::claims_are_local`](crate::store::Store::claims_are_local)): the
    /// next freed slots start these without asking the store.
    ready: VecDeque<Claim>,
}

impl QueueState {
    /// Gives back the claims taken ahead (the webhook changed, was paused or deleted): they
    /// are claimed again, from the head, when the queue is next served.
    fn release_ready(&mut self) {
        for claim in self.ready.drain(..) {
            self.claimed.remove(&claim.delivery_id);
        }
        self.resume = None;
    }
}

/// The due time of the last delivery the dispatcher started: the next claim skips the entries
/// due earlier (all claimed by then). Valid while every entry due before it is claimed, or was
/// put there by a store write that announced it: such an announcement
/// ([`DispatchMsg::Enqueued`]), a claim ended without its entry moved, a set-aside delivery, or
/// a webhook or config change clears it. It is not used while fewer than
/// [`RESUME_MIN_CLAIMS`] claims are open, nor [`RESUME_FOR_MS`] after the scan from the head
/// it started from: the next claim then scans from the head again.
#[derive(Debug, Clone, Copy)]
struct Resume {
    due_ms: u64,
    since_ms: u64,
}

/// Holds a claim the store just gave (started now or kept ready) in a queue's `claimed` set, so
/// no scan returns it again, and moves the queue's resume point to its due time, kept since
/// `since_ms` (`None` while the queue may not resume). Takes the two fields, not the queue: the
/// fill reads its settings meanwhile.
fn hold(
    claimed: &mut HashSet<DeliveryId>,
    resume_point: &mut Option<Resume>,
    claim: &Claim,
    since_ms: Option<u64>,
) {
    claimed.insert(claim.delivery_id.clone());
    *resume_point = claim
        .queue_due
        .zip(since_ms)
        .map(|(due_ms, since_ms)| Resume { due_ms, since_ms });
}

/// Per-tenant dispatch state: attempts in progress and the queues waiting for room.
#[derive(Default)]
struct TenantState {
    in_progress: usize,
    /// Served in turn as the tenant's attempts complete, so one of its webhooks whose attempts
    /// hang cannot take every freed place from its other webhooks.
    waiting: VecDeque<QueueKey>,
}

struct QueueSettings {
    active: bool,
    max_in_flight: usize,
    limiter: Option<DefaultDirectRateLimiter>,
}

pub struct Dispatcher {
    /// Shared by every attempt (one reference count per attempt, not one per field).
    ctx: std::sync::Arc<DeliveryContext>,
    rx: mpsc::UnboundedReceiver<DispatchMsg>,
    queues: HashMap<QueueKey, QueueState>,
    timers: BTreeSet<(u64, QueueKey)>,
    tenants: HashMap<String, TenantState>,
    /// Most attempts one tenant may have in progress (read at start).
    tenant_cap: usize,
    attempts: JoinSet<()>,
    /// Where attempts start: the normal lane, or the yielding one while the CPU is saturated.
    lanes: super::runtime::Lanes,
}

impl Dispatcher {
    /// The handle to give producers of work, and the receiving end for [`Dispatcher::new`].
    pub fn channel() -> (DispatchHandle, DispatchReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DispatchHandle(tx), DispatchReceiver(rx))
    }

    pub fn new(ctx: DeliveryContext, rx: DispatchReceiver, lanes: super::runtime::Lanes) -> Self {
        let tenant_cap = ctx.config.current().delivery.max_in_flight.max(1) * TENANT_CAP_FACTOR;
        Dispatcher {
            ctx: std::sync::Arc::new(ctx),
            rx: rx.0,
            queues: HashMap::new(),
            timers: BTreeSet::new(),
            tenants: HashMap::new(),
            tenant_cap,
            attempts: JoinSet::new(),
            lanes,
        }
    }

    /// Runs until `shutdown`, then lets attempts in flight finish for up to `[delivery]
    /// shutdown_grace` (as configured when the stop begins) and abandons the rest (they stay
    /// queued and run after restart).
    pub async fn run(mut self, shutdown: CancellationToken) {
        match self.ctx.store.all_webhook_ids().await {
            Ok(ids) => {
                for key in ids {
                    self.wake(key, 0);
                }
            }
            Err(err) => warn!(error = %err, "could not list webhooks; queues start on first event"),
        }
        loop {
            self.run_due().await;
            let next_wake = self.timers.first().map(|(at, _)| *at);
            let sleep = async {
                match next_wake {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                Some(_) = self.attempts.join_next(), if !self.attempts.is_empty() => {}
                _ = sleep => {}
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg).await;
            }
        }
        let grace = self.ctx.config.current().delivery.shutdown_grace;
        let drain = async { while self.attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                abandoned = self.attempts.len(),
                "attempts still running at shutdown were abandoned; they run again after restart"
            );
            self.attempts.shutdown().await;
        }
    }

    async fn handle(&mut self, msg: DispatchMsg) {
        match msg {
            DispatchMsg::Enqueued {
                tenant,
                webhook,
                due_ms,
            } => {
                let key = (tenant, webhook);
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.resume = None;
                }
                self.wake(key, due_ms)
            }
            DispatchMsg::Completed {
                tenant,
                webhook,
                delivery,
                set_aside_ms,
                entry_moved,
            } => {
                if let Some(queue) = self.queues.get_mut(&(tenant.clone(), webhook.clone())) {
                    queue.claimed.remove(&delivery);
                    if !entry_moved || set_aside_ms.is_some() {
                        queue.resume = None;
                    }
                    if let Some(ms) = set_aside_ms {
                        queue.set_aside.insert(delivery, now_ms() + ms);
                    }
                }
                self.wake((tenant, webhook), 0);
            }
            DispatchMsg::SlotFreed { tenant, webhook } => {
                if let Some(queue) = self.queues.get_mut(&(tenant.clone(), webhook.clone())) {
                    queue.sending = queue.sending.saturating_sub(1);
                }
                // Room was freed for this tenant: its queues that waited for room are served
                // first, in the order they started waiting, while room lasts. A served queue
                // that wants more waits again at the back, so they take turns.
                let now = now_ms();
                if let Some(state) = self.tenants.get_mut(&tenant) {
                    state.in_progress = state.in_progress.saturating_sub(1);
                }
                while self.has_room(&tenant)
                    && let Some(waiting) = self
                        .tenants
                        .get_mut(&tenant)
                        .and_then(|state| state.waiting.pop_front())
                {
                    if let Some(queue) = self.queues.get_mut(&waiting) {
                        queue.waiting_for_room = false;
                    }
                    self.fill(&waiting, now, true).await;
                }
                if let Some(state) = self.tenants.get(&tenant)
                    && state.in_progress == 0
                    && state.waiting.is_empty()
                {
                    self.tenants.remove(&tenant);
                }
                self.wake((tenant, webhook), 0);
            }
            DispatchMsg::ConfigChanged => {
                let keys: Vec<QueueKey> = self.queues.keys().cloned().collect();
                for key in keys {
                    if let Some(queue) = self.queues.get_mut(&key) {
                        queue.settings = None;
                        queue.release_ready();
                    }
                    self.wake(key, 0);
                }
            }
            DispatchMsg::WebhookChanged { tenant, webhook } => {
                let key = (tenant, webhook);
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.settings = None;
                    queue.release_ready();
                }
                self.wake(key, 0);
            }
        }
    }

    /// Makes sure the queue is looked at no later than `at_ms`.
    fn wake(&mut self, key: QueueKey, at_ms: u64) {
        let queue = self
            .queues
            .entry(key.clone())
            .or_insert_with(|| QueueState {
                claimed: HashSet::new(),
                sending: 0,
                settings: None,
                wake_at: None,
                waiting_for_room: false,
                set_aside: HashMap::new(),
                resume: None,
                ready: VecDeque::new(),
            });
        match queue.wake_at {
            Some(existing) if existing <= at_ms => {}
            existing => {
                if let Some(existing) = existing {
                    self.timers.remove(&(existing, key.clone()));
                }
                queue.wake_at = Some(at_ms);
                self.timers.insert((at_ms, key));
            }
        }
    }

    async fn run_due(&mut self) {
        let now = now_ms();
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            let (_, key) = self.timers.pop_first().expect("checked non-empty");
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.wake_at = None;
            }
            self.fill(&key, now, false).await;
        }
    }

    /// Whether `tenant` may start another attempt.
    fn has_room(&self, tenant: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_none_or(|state| state.in_progress < self.tenant_cap)
    }

    /// Starts as many due attempts of one webhook as its limits allow. Unless the queue is
    /// being served from its tenant's waiting list (`from_waiting`), it takes no room while
    /// other queues of the tenant wait for some: it joins them instead.
    async fn fill(&mut self, key: &QueueKey, now: u64, from_waiting: bool) {
        let (tenant, webhook_id) = key;
        let Some(queue) = self.queues.get(key) else {
            return;
        };
        if queue.settings.is_none() {
            let read = self.ctx.store.webhook(tenant, webhook_id).await;
            let Some(queue) = self.queues.get_mut(key) else {
                return;
            };
            match read {
                Ok(Some(webhook)) => {
                    let config = self.ctx.config.current();
                    let default_cap = config
                        .tenant(tenant)
                        .map(|t| t.delivery.max_in_flight_per_webhook)
                        .unwrap_or(config.delivery.max_in_flight_per_webhook);
                    queue.settings = Some(QueueSettings {
                        active: webhook.status == WebhookStatus::Active,
                        max_in_flight: webhook.max_in_flight.unwrap_or(default_cap).max(1) as usize,
                        limiter: webhook
                            .rate_limit_per_sec
                            .and_then(NonZeroU32::new)
                            .map(|rate| RateLimiter::direct(Quota::per_second(rate))),
                    });
                }
                Ok(None) => {
                    // Deleted. Its delete settled what was queued, but a retry or replay that
                    // raced it can queue one more: claim those one at a time, and their
                    // attempts settle them `failed / webhook_deleted` (`attempt::load`), so
                    // nothing waits for good in a queue no one claims from.
                    queue.settings = Some(QueueSettings {
                        active: true,
                        max_in_flight: 1,
                        limiter: None,
                    });
                }
                Err(err) => {
                    warn!(tenant, webhook_id = %webhook_id, error = %err, "could not read webhook; retrying in 1s");
                    self.wake(key.clone(), now + 1000);
                    return;
                }
            }
        }
        let Some(queue) = self.queues.get(key) else {
            return;
        };
        let settings = queue.settings.as_ref().expect("loaded above");
        if !settings.active && !queue.ready.is_empty() {
            self.queues
                .get_mut(key)
                .expect("read above")
                .release_ready();
            return;
        }
        if !settings.active || queue.waiting_for_room {
            return;
        }
        // The cap counts the claims started and not yet recorded; those taken ahead come on
        // top of it (at most `max_in_flight` more), so they never hold back a start.
        let open = queue.claimed.len().saturating_sub(queue.ready.len());
        let capacity = settings
            .max_in_flight
            .saturating_sub(queue.sending)
            .min((settings.max_in_flight * CLAIMS_PER_SLOT).saturating_sub(open));
        if capacity == 0 {
            return; // a freed slot or a recorded outcome wakes the queue
        }
        let tenant_state = self.tenants.entry(tenant.clone()).or_default();
        let others_first = !from_waiting && !tenant_state.waiting.is_empty();
        let room = self.tenant_cap.saturating_sub(tenant_state.in_progress);
        if room == 0 || others_first {
            // Claim nothing now: a completion of this tenant serves the queue in its turn.
            tenant_state.waiting.push_back(key.clone());
            if let Some(queue) = self.queues.get_mut(key) {
                queue.waiting_for_room = true;
            }
            return;
        }
        let capacity = capacity.min(room);
        let from_ready = capacity.min(queue.ready.len());
        // Where claims are the process's own, take up to one more slot's worth ahead, so the
        // next freed slots start without a store scan (not under a rate limit, whose waits
        // would hold them).
        let local = self.ctx.store.claims_are_local();
        let ahead = if local && settings.limiter.is_none() {
            // What tops the ready list back up to one slot's worth once this fill has started.
            settings
                .max_in_flight
                .saturating_sub(queue.ready.len() - from_ready)
        } else {
            0
        };
        let to_claim = capacity - from_ready;
        let mut next_wake = None;
        let mut fresh = Vec::new();
        let mut resume = None;
        if to_claim > 0 {
            // Set-aside deliveries come back when their time is up, wherever the resume point
            // is: while there are any, every claim scans from the head (and none sets a resume
            // point).
            let resumable = queue.set_aside.is_empty();
            resume = queue.resume.filter(|resume| {
                resumable
                    && queue.claimed.len() >= RESUME_MIN_CLAIMS
                    && now < resume.since_ms.saturating_add(RESUME_FOR_MS)
            });
            let mut set_aside_until = None;
            let not_now = if resumable {
                std::borrow::Cow::Borrowed(&queue.claimed)
            } else {
                let queue = self.queues.get_mut(key).expect("read above");
                queue.set_aside.retain(|_, until| *until > now);
                set_aside_until = queue.set_aside.values().min().copied();
                std::borrow::Cow::Owned(
                    queue
                        .claimed
                        .iter()
                        .chain(queue.set_aside.keys())
                        .cloned()
                        .collect(),
                )
            };
            let claimed = self
                .ctx
                .store
                .claim_due(
                    tenant,
                    webhook_id,
                    &not_now,
                    resume.map(|resume| resume.due_ms),
                    now,
                    to_claim + ahead,
                )
                .await;
            drop(not_now);
            let head = match claimed {
                Ok(head) => head,
                Err(err) => {
                    warn!(tenant, webhook_id = %webhook_id, error = %err, "could not read queue; retrying in 1s");
                    self.wake(key.clone(), now + 1000);
                    return;
                }
            };
            next_wake = head
                .next_due
                .filter(|next| *next > now)
                .into_iter()
                .chain(set_aside_until)
                .min();
            fresh = head.due;
        }
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        // Resume points are kept from where this fill's scan resumed, or from now.
        let since_ms = queue
            .set_aside
            .is_empty()
            .then(|| resume.map_or(now, |resume| resume.since_ms));
        let settings = queue.settings.as_ref().expect("loaded above");
        let mut ready = std::mem::take(&mut queue.ready);
        let mut fresh = fresh.into_iter();
        let mut started = 0;
        while started < capacity {
            let (claim, is_fresh) = match ready.pop_front() {
                Some(claim) => (claim, false),
                None => match fresh.next() {
                    Some(claim) => (claim, true),
                    None => break,
                },
            };
            if let Some(limiter) = &settings.limiter
                && let Err(not_until) = limiter.check()
            {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                next_wake = Some(now + (wait.as_millis() as u64).max(1));
                if !is_fresh {
                    ready.push_front(claim);
                }
                break;
            }
            if is_fresh {
                hold(&mut queue.claimed, &mut queue.resume, &claim, since_ms);
            }
            queue.sending += 1;
            started += 1;
            let ctx = self.ctx.clone();
            let (tenant, webhook_id) = (tenant.clone(), webhook_id.clone());
            let in_flight = ctx.metrics.attempt_in_flight();
            let slot = Slot {
                dispatch: ctx.dispatch.clone(),
                metrics: ctx.metrics.clone(),
                tenant: tenant.clone(),
                webhook: webhook_id.clone(),
                delivery: claim.delivery_id.clone(),
                claimed: std::time::Instant::now(),
                holds_slot: true,
                ended: false,
                set_aside: None,
            };
            // The attempt's future is large (the send, the plugin hooks and the record are
            // inlined into it): boxed once here, the task holds a pointer, so spawning and
            // finishing it no longer copy the whole future (3-4 % of the delivery workers'
            // CPU in memcpy, per the e2e bench's profile).
            self.attempts.spawn_on(
                Box::pin(async move {
                    let _in_flight = in_flight;
                    attempt::run(&ctx, &tenant, &webhook_id, &claim, slot).await;
                }),
                self.lanes.for_next_attempt(),
            );
        }
        // What was claimed and not started waits for the next freed slot, where claims are
        // the process's own; a shared backend's go back (they are claimed again later).
        if local {
            for claim in fresh {
                hold(&mut queue.claimed, &mut queue.resume, &claim, since_ms);
                ready.push_back(claim);
            }
        }
        queue.ready = ready;
        if started > 0 {
            self.tenants.entry(tenant.clone()).or_default().in_progress += started;
            debug!(tenant, webhook_id = %webhook_id, started, "attempts started");
        }
        if let Some(at) = next_wake {
            self.wake(key.clone(), at);
        }
    }
}

/// A claimed delivery: one of its webhook's slots (and one of its tenant's attempts in
/// progress) until [`Slot::free`], then the claim alone until [`Slot::end_claim`] or drop. The
/// attempt frees the slot as soon as its send is over and ends the claim once the outcome is
/// recorded, so the outcome's write and the consequences run outside the webhook's slots.
/// Ending the claim tells the dispatcher (and frees the slot if that was not done).
pub struct Slot {
    dispatch: DispatchHandle,
    metrics: crate::telemetry::Metrics,
    tenant: String,
    webhook: WebhookId,
    delivery: DeliveryId,
    claimed: std::time::Instant,
    holds_slot: bool,
    /// The claim has ended (the dispatcher was told).
    ended: bool,
    set_aside: Option<Duration>,
}

impl Slot {
    /// Gives the webhook's slot back; the delivery stays claimed until this is dropped.
    pub fn free(&mut self) {
        if std::mem::take(&mut self.holds_slot) {
            self.metrics
                .attempt_slot(&self.tenant, self.claimed.elapsed());
            self.dispatch
                .slot_freed(self.tenant.clone(), self.webhook.clone());
        }
    }

    /// When the claim ends, keep the delivery from being claimed again for `wait`: its attempt
    /// ended without an outcome (the store failed, or cannot read the delivery), and trying
    /// again at once would only spin.
    pub fn set_aside(&mut self, wait: Duration) {
        self.set_aside = Some(wait);
    }

    /// Ends the claim once the store has moved the delivery's queue entry (the outcome is
    /// recorded, or the delivery was settled or requeued on purpose): the dispatcher may claim
    /// the webhook's next deliveries.
    pub fn end_claim(&mut self) {
        self.end(true);
    }

    fn end(&mut self, entry_moved: bool) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.free();
        self.dispatch.completed(
            std::mem::take(&mut self.tenant),
            self.webhook.clone(),
            self.delivery.clone(),
            self.set_aside.map(|wait| wait.as_millis() as u64),
            entry_moved,
        );
    }
}

impl Drop for Slot {
    /// A claim dropped without [`Slot::end_claim`] ends with its entry where it was; if its
    /// attempt panicked, the delivery is set aside like one the store failed, so a bug that
    /// panics after the send never resends it in a loop.
    fn drop(&mut self) {
        if std::thread::panicking() && self.set_aside.is_none() {
            self.set_aside = Some(PANICKED_ATTEMPT_PAUSE);
        }
        self.end(false);
    }
}

/// How long a delivery whose attempt panicked waits before it is claimed again.
const PANICKED_ATTEMPT_PAUSE: Duration = Duration::from_secs(60);

/// The receiving end of [`Dispatcher::channel`].
pub struct DispatchReceiver(mpsc::UnboundedReceiver<DispatchMsg>);

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(dispatch: &DispatchHandle) -> Slot {
        Slot {
            dispatch: dispatch.clone(),
            metrics: crate::telemetry::Metrics::new(),
            tenant: "acme".into(),
            webhook: WebhookId::new(),
            delivery: DeliveryId::new(),
            claimed: std::time::Instant::now(),
            holds_slot: true,
            ended: false,
            set_aside: None,
        }
    }

    /// What the claim's end told the dispatcher: its `set_aside_ms`.
    fn set_aside_told(rx: &mut DispatchReceiver) -> Option<u64> {
        loop {
            match rx.0.try_recv().expect("the claim's end was told") {
                DispatchMsg::Completed { set_aside_ms, .. } => return set_aside_ms,
                _ => continue,
            }
        }
    }

    #[test]
    fn a_claim_whose_attempt_panicked_is_set_aside_and_one_simply_dropped_is_not() {
        let (dispatch, mut rx) = Dispatcher::channel();
        drop(slot(&dispatch));
        assert_eq!(set_aside_told(&mut rx), None);

        let claimed = slot(&dispatch);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = claimed;
            panic!("a bug after the send");
        }));
        assert!(panicked.is_err());
        assert_eq!(
            set_aside_told(&mut rx),
            Some(PANICKED_ATTEMPT_PAUSE.as_millis() as u64)
        );

        // A pause the attempt chose stays its own.
        let mut claimed = slot(&dispatch);
        claimed.set_aside(Duration::from_secs(5));
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = claimed;
            panic!("after choosing a pause");
        }));
        assert_eq!(set_aside_told(&mut rx), Some(5_000));
    }
}
