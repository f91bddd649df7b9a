//! Ingest: group commit for accepted events.
//!
//! Request handlers prepare a [`NewEvent`] (validated, fanned out) and submit it. One writer
//! task takes every submission waiting at that moment and hands them to the store as one group
//! ([`Store::append_events`]: ids assigned, idempotency keys resolved, one durable write).
//! Only after that write does any of them get its answer (the API's 202), so an acknowledged
//! event survives kill -9, and concurrent requests share one fsync instead of queueing behind
//! one fsync each. The store tells the dispatcher about the new deliveries itself.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::fanout;
use crate::ids::{EventId, WebhookId};
use crate::store::{Appended, DeliveryRecord, EventRecord, NewEvent, Store, StoreError};

/// Most submissions written and flushed together.
const MAX_GROUP_COMMIT: usize = 4096;
/// Messages (single events or batches) that may wait for the writer before handlers wait to
/// submit (backpressure).
const QUEUE_CAPACITY: usize = 16_384;

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
/// (one for `POST /v1/events`, up to a batch for `POST /v1/events/batch`); the writer never
/// splits a message across two group commits.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::Sender<Vec<Submission>>,
}

impl Ingest {
    /// Starts the writer task. It ends when every `Ingest` handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = tokio::spawn(write_loop(store, rx));
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

    /// Submits several events as one unit: they are written and flushed in the same group
    /// commit, and idempotency keys repeated among them resolve to the first (in order).
    /// Answers one outcome per event, in order, once all of them are durable.
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

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Vec<Submission>>) {
    // A group takes every message waiting; it may pass MAX_GROUP_COMMIT events by at most one
    // batch, since a batch is never split.
    while let Some(mut group) = rx.recv().await {
        while group.len() < MAX_GROUP_COMMIT
            && let Ok(more) = rx.try_recv()
        {
            group.extend(more);
        }
        commit_group(store.as_ref(), group).await;
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
