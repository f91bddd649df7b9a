//! Ingest: group commit for accepted events.
//!
//! Request handlers prepare a [`NewEvent`] (validated, fanned out) and submit it. One writer
//! task takes every submission waiting at that moment and hands them to the store as one group
//! ([`Store::append_events`]: ids assigned, idempotency keys resolved, one durable write).
//! Only after that write does any of them get its answer (the API's 202), so an acknowledged
//! event survives kill -9, and concurrent requests share one fsync instead of queueing behind
//! one fsync each. The store tells the dispatcher about the new deliveries itself.
//!
//! Groups are bounded and fair between tenants ([`FairQueue`]): the writer takes submissions
//! round-robin across the tenants waiting, one at a time, until a group holds
//! [`MAX_GROUP_WORK`] events plus deliveries. A batch larger than that spans several groups,
//! written in order (the request is answered once all of them are durable), so one tenant's
//! huge batch delays another tenant's single event by at most one bounded group.
//!
//! Under load (the last group came from more than one request) the writer lingers before the
//! next group, at most [`LINGER`], so the group's fixed cost (an `fdatasync`, sled's batch) is
//! shared by more events. While deliveries keep pace it stops lingering as soon as as many
//! requests wait as came for the last group: producers that send their next event when
//! answered are back within a fraction of the linger, and waiting out the whole of it only
//! kept them idle (e2e bench s1 at 32 producers: 9.1k events/s and accept p50 3.5 ms with the
//! whole linger, 13.0k/s and 2.2 ms with this). While deliveries are behind
//! ([`DeliveryLag::behind`]: the engine starts attempts later than they are due, so its CPU is
//! the limit) it lingers the whole time: the cheapest commits, and the CPU left to the
//! deliveries.
//!
//! The count also ends the linger for paced (open-loop) arrivals, as fast as they come, so
//! their groups are smaller than a whole linger's (which tokio's 1 ms timer wheel made 1–2 ms):
//! e2e bench s6 offered 6,200 events/s to both, 1.6× the syncs and ~10 % more CPU per
//! delivery, for accept p50 2.1–2.5 ms instead of 3.2–3.5 ms and a lower p99.
//!
//! One group is in flight at a time. Two were measured (e2e bench s1, 3 rounds alternated,
//! with the sled writer writing the next group while the last one's `fdatasync` ran on a
//! thread of its own): the groups did not split in two (28-30 events per sync became 25-26,
//! 23-24 with one group per write), and neither the deliveries/s nor the cores' idle share
//! (~17 %) moved beyond the noise. The 32 producers come back as one wave after each answer,
//! so a second group finds few of them waiting.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::fanout;
use crate::ids::{EventId, WebhookId};
use crate::lag::DeliveryLag;
use crate::store::{Appended, DeliveryRecord, EventRecord, NewEvent, Store, StoreError};

/// Most work in one group: events plus their deliveries (a group's write grows with both).
/// A single event with more deliveries than this is written alone.
pub const MAX_GROUP_WORK: usize = 16_384;
/// Most events the writer holds taken from the channel and not yet written; beyond it,
/// handlers wait to submit (backpressure), as they do when the channel is full.
const MAX_BUFFERED_EVENTS: usize = 65_536;
/// Messages (single events or batches) that may wait for the writer before handlers wait to
/// submit (backpressure).
const QUEUE_CAPACITY: usize = 16_384;
/// Longest the writer waits for more submissions after a group from more than one request
/// (concurrent producers), so the next group shares its fixed cost (an `fdatasync`, sled's
/// batch) among more events. A lone producer's events are written at once.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Debug)]
pub enum IngestOutcome {
    /// Written durably, with the ids the store gave the event and its deliveries.
    Created {
        event: EventRecord,
        deliveries: Vec<DeliveryRecord>,
    },
    /// The idempotency key already names this event; nothing new was written.
    Duplicate(EventId),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the store refused the write: {0}")]
    Store(#[from] StoreError),
    #[error("the store could not make the event durable: {0}")]
    Unavailable(String),
    #[error("hookd is shutting down")]
    ShuttingDown,
}

struct Submission {
    event: NewEvent,
    reply: oneshot::Sender<Result<IngestOutcome, IngestError>>,
}

/// Handle for submitting events; cheap to clone. Each message is one request's submissions
/// (one for `POST /v1/events`, up to a batch for `POST /v1/events/batch`), written in order.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::Sender<Vec<Submission>>,
}

impl Ingest {
    /// Starts the writer task. It ends when every `Ingest` handle is dropped. `lag` says when
    /// deliveries are behind (the writer then lingers its whole `LINGER` before each group).
    pub fn start(store: Arc<dyn Store>, lag: DeliveryLag) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = tokio::spawn(write_loop(store, lag, rx));
        (Ingest { tx }, writer)
    }

    /// Submits one event and waits until it is durable (or known to be a duplicate).
    pub async fn submit(&self, event: NewEvent) -> Result<IngestOutcome, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(vec![Submission { event, reply }])
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        answer.await.map_err(|_| IngestError::ShuttingDown)?
    }

    /// Submits several events as one unit: they are written in order (in one group commit
    /// unless they pass [`MAX_GROUP_WORK`]), and idempotency keys repeated among them resolve
    /// to the first. Answers one outcome per event, in order, once all of them are durable.
    pub async fn submit_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<IngestOutcome, IngestError>>, IngestError> {
        let (submissions, answers): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|event| {
                let (reply, answer) = oneshot::channel();
                (Submission { event, reply }, answer)
            })
            .unzip();
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        self.tx
            .send(submissions)
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(answer.await.map_err(|_| IngestError::ShuttingDown)?);
        }
        Ok(outcomes)
    }
}

/// What a producer sent, validated, before fan-out.
#[derive(Debug, Clone)]
pub struct EventInput {
    pub event_type: String,
    pub channel: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: u64,
    pub payload: Box<serde_json::value::RawValue>,
}

/// An event with its fan-out: one delivery, due now, per active webhook of the tenant that
/// subscribes to it, except `skip` (an operational event is never sent to the webhook it is
/// about).
pub async fn prepare_event(
    store: &dyn Store,
    tenant: &str,
    input: EventInput,
    idempotency_window_ms: u64,
    skip: Option<&WebhookId>,
) -> Result<NewEvent, StoreError> {
    let webhooks = store
        .webhooks_of(tenant)
        .await?
        .iter()
        .filter(|w| Some(&w.id) != skip)
        .filter(|w| fanout::webhook_matches(w, &input.event_type, input.channel.as_deref()))
        .map(|w| w.id.clone())
        .collect();
    Ok(NewEvent {
        tenant: tenant.to_string(),
        event_type: input.event_type,
        channel: input.channel,
        idempotency_key: input.idempotency_key,
        idempotency_window_ms,
        created_at: input.created_at,
        payload: input.payload,
        webhooks,
    })
}

async fn write_loop(
    store: Arc<dyn Store>,
    lag: DeliveryLag,
    mut rx: mpsc::Receiver<Vec<Submission>>,
) {
    let mut waiting = FairQueue::default();
    // Requests that arrived for the last group: producers that may come back at once.
    let mut last_requests = 0;
    loop {
        let mut requests = 0;
        if waiting.is_empty() {
            match rx.recv().await {
                Some(message) => waiting.push(message),
                None => break,
            }
            requests += 1;
            if last_requests > 1 {
                requests += linger(&mut rx, &mut waiting, last_requests - 1, &lag).await;
            }
        }
        // Everything waiting now, so every tenant with a submission gets its turn.
        while waiting.len() < MAX_BUFFERED_EVENTS
            && let Ok(message) = rx.try_recv()
        {
            waiting.push(message);
            requests += 1;
        }
        last_requests = requests;
        let group = waiting.next_group(MAX_GROUP_WORK);
        commit_group(store.as_ref(), group).await;
    }
}

/// Waits for more requests before a group, at most [`LINGER`]: all of it while deliveries are
/// behind, otherwise only until `expected` more have arrived (as many as came for the last
/// group: producers that send their next event when answered are back within a fraction of
/// the linger). Returns how many arrived.
async fn linger(
    rx: &mut mpsc::Receiver<Vec<Submission>>,
    waiting: &mut FairQueue,
    expected: usize,
    lag: &DeliveryLag,
) -> usize {
    if lag.behind() {
        tokio::time::sleep(LINGER).await;
        return 0;
    }
    let timer = tokio::time::sleep(LINGER);
    tokio::pin!(timer);
    let mut arrived = 0;
    while arrived < expected && waiting.len() < MAX_BUFFERED_EVENTS {
        tokio::select! {
            biased;
            message = rx.recv() => match message {
                Some(message) => {
                    waiting.push(message);
                    arrived += 1;
                }
                None => break,
            },
            () = &mut timer => break,
        }
    }
    arrived
}

/// Submissions waiting for the writer, one queue per tenant, taken round-robin.
#[derive(Default)]
struct FairQueue {
    tenants: std::collections::HashMap<String, std::collections::VecDeque<Submission>>,
    /// Tenants with submissions, in turn order.
    turns: std::collections::VecDeque<String>,
    len: usize,
}

impl FairQueue {
    fn push(&mut self, message: Vec<Submission>) {
        for submission in message {
            let tenant = submission.event.tenant.clone();
            let queue = self.tenants.entry(tenant.clone()).or_default();
            if queue.is_empty() {
                self.turns.push_back(tenant);
            }
            queue.push_back(submission);
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One submission per tenant per turn until the group holds `max_work` events plus
    /// deliveries (at least one submission, however large).
    fn next_group(&mut self, max_work: usize) -> Vec<Submission> {
        let mut group = Vec::new();
        let mut work = 0;
        while let Some(tenant) = self.turns.pop_front() {
            let queue = self
                .tenants
                .get_mut(&tenant)
                .expect("a tenant in turn has a queue");
            let next_work = queue.front().map_or(0, |s| 1 + s.event.webhooks.len());
            if !group.is_empty() && work + next_work > max_work {
                self.turns.push_front(tenant);
                break;
            }
            let submission = queue
                .pop_front()
                .expect("a tenant in turn has a submission");
            if queue.is_empty() {
                self.tenants.remove(&tenant);
            } else {
                self.turns.push_back(tenant);
            }
            self.len -= 1;
            work += next_work;
            group.push(submission);
        }
        group
    }
}

async fn commit_group(store: &dyn Store, group: Vec<Submission>) {
    let (events, replies): (Vec<NewEvent>, Vec<_>) =
        group.into_iter().map(|s| (s.event, s.reply)).unzip();
    let count = events.len();
    match store.append_events(events).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let outcome = match outcome {
                    Appended::Created { event, deliveries } => {
                        IngestOutcome::Created { event, deliveries }
                    }
                    Appended::Duplicate(id) => IngestOutcome::Duplicate(id),
                };
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            warn!(error = %err, events = count, "ingest write failed; the events were refused");
            let message = err.to_string();
            for reply in replies {
                let refusal = match &err {
                    // Refused before writing (full or read-only data dir): its own code.
                    StoreError::Space(problem) => IngestError::Store(StoreError::Space(*problem)),
                    _ => IngestError::Unavailable(message.clone()),
                };
                let _ = reply.send(Err(refusal));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn submission(tenant: &str, deliveries: usize) -> Submission {
        let (reply, _) = oneshot::channel();
        let event = NewEvent {
            tenant: tenant.to_string(),
            event_type: "t".into(),
            channel: None,
            idempotency_key: None,
            idempotency_window_ms: 0,
            created_at: 0,
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            webhooks: (0..deliveries).map(|_| WebhookId::new()).collect(),
        };
        Submission { event, reply }
    }

    fn tenants(group: &[Submission]) -> Vec<&str> {
        group.iter().map(|s| s.event.tenant.as_str()).collect()
    }

    #[test]
    fn a_huge_batch_delays_another_tenants_event_by_at_most_one_bounded_group() {
        let mut queue = FairQueue::default();
        // A's batch: 1000 events × 99 deliveries = 100,000 units of work.
        queue.push((0..1000).map(|_| submission("a", 99)).collect());
        queue.push(vec![submission("b", 1)]);
        let first = queue.next_group(1000);
        // A's first event and B's event share the first group; A's work stays bounded.
        assert_eq!(tenants(&first)[..2], ["a", "b"]);
        assert!(first.len() <= 11, "{}", first.len());
        let mut rest = 0;
        while !queue.is_empty() {
            let group = queue.next_group(1000);
            let work: usize = group.iter().map(|s| 1 + s.event.webhooks.len()).sum();
            assert!(work <= 1000 && !group.is_empty());
            rest += group.len();
        }
        assert_eq!(
            first.len() - 1 + rest,
            1000,
            "every event of A, in order, once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_linger_ends_when_the_last_groups_producers_are_back_and_is_whole_while_behind() {
        let lag = DeliveryLag::default();
        let (tx, mut rx) = mpsc::channel(16);
        let mut waiting = FairQueue::default();
        let linger_took = |start: tokio::time::Instant| {
            let took = start.elapsed();
            assert!(took >= LINGER && took < 2 * LINGER, "{took:?}");
        };

        // Keeping pace, and as many requests as came last time are back: no wait at all.
        for _ in 0..3 {
            tx.send(vec![submission("a", 1)]).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        assert_eq!(linger(&mut rx, &mut waiting, 3, &lag).await, 3);
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Fewer are back than expected: it waits the linger and no longer.
        tx.send(vec![submission("b", 1)]).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(linger(&mut rx, &mut waiting, 3, &lag).await, 1);
        linger_took(start);

        // Deliveries behind: the whole linger even with everyone back; the requests stay in
        // the channel for the group to take.
        lag.behind_for(Duration::from_secs(3600));
        for _ in 0..3 {
            tx.send(vec![submission("c", 1)]).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        assert_eq!(linger(&mut rx, &mut waiting, 3, &lag).await, 0);
        linger_took(start);
        assert_eq!((waiting.len(), rx.len()), (4, 3));
    }

    #[test]
    fn tenants_take_turns_and_keep_their_order() {
        let mut queue = FairQueue::default();
        let mut batch = vec![submission("a", 0), submission("a", 0), submission("a", 0)];
        batch[1].event.event_type = "second".into();
        queue.push(batch);
        queue.push(vec![submission("b", 0)]);
        queue.push(vec![submission("c", 0)]);
        let group = queue.next_group(3);
        assert_eq!(tenants(&group), ["a", "b", "c"]);
        let group = queue.next_group(100);
        assert_eq!(tenants(&group), ["a", "a"]);
        assert_eq!(group[0].event.event_type, "second");
        // One event larger than the bound is written alone.
        queue.push(vec![submission("a", 50)]);
        assert_eq!(queue.next_group(10).len(), 1);
        assert!(queue.is_empty());
    }
}
