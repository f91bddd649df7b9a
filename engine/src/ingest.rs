//! Ingest: makes accepted events durable with group commit, then hands their deliveries to
//! the dispatcher.
//!
//! Request handlers prepare a [`NewEvent`] (validated, fanned out, ids assigned) and submit it.
//! One writer task takes every submission waiting at that moment, resolves idempotency keys
//! among them and against the store, writes all of them in one sled batch and flushes once.
//! Only after that flush does any of them get its answer (the API's 202), so an acknowledged
//! event survives kill -9, and concurrent requests share one fsync instead of queueing behind
//! one fsync each.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::delivery::DispatchHandle;
use crate::fanout;
use crate::ids::{DeliveryId, EventId, WebhookId, now_ms};
use crate::store::{DeliveryRecord, DeliveryStatus, EventRecord, NewEvent, Store, StoreError};

/// Most submissions written and flushed together.
const MAX_GROUP_COMMIT: usize = 4096;
/// Messages (single events or batches) that may wait for the writer before handlers wait to
/// submit (backpressure).
const QUEUE_CAPACITY: usize = 16_384;

#[derive(Debug)]
pub enum IngestOutcome {
    /// Written and flushed.
    Created,
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
    idempotency_window_ms: u64,
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
    pub fn start(store: Store, dispatch: DispatchHandle) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = tokio::spawn(write_loop(store, dispatch, rx));
        (Ingest { tx }, writer)
    }

    /// Submits one event and waits until it is durable (or known to be a duplicate).
    pub async fn submit(
        &self,
        event: NewEvent,
        idempotency_window_ms: u64,
    ) -> Result<IngestOutcome, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(vec![Submission {
                event,
                idempotency_window_ms,
                reply,
            }])
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
        idempotency_window_ms: u64,
    ) -> Result<Vec<Result<IngestOutcome, IngestError>>, IngestError> {
        let (submissions, answers): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|event| {
                let (reply, answer) = oneshot::channel();
                let submission = Submission {
                    event,
                    idempotency_window_ms,
                    reply,
                };
                (submission, answer)
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

/// An event with its fan-out: one pending delivery, due now, per active webhook of the tenant
/// that subscribes to it, except `skip` (an operational event is never sent to the webhook it
/// is about).
pub fn prepare_event(
    store: &Store,
    tenant: &str,
    event: EventRecord,
    skip: Option<&WebhookId>,
) -> Result<NewEvent, StoreError> {
    let now = event.created_at;
    let deliveries = store
        .webhooks_shared(tenant)?
        .iter()
        .filter(|w| Some(&w.id) != skip)
        .filter(|w| fanout::webhook_matches(w, &event.event_type, event.channel.as_deref()))
        .map(|w| DeliveryRecord {
            id: DeliveryId::new(),
            event_id: event.id.clone(),
            webhook_id: w.id.clone(),
            event_type: event.event_type.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: now,
            updated_at: now,
            next_attempt_at: Some(now),
            last_attempt_at: None,
            last_status_code: None,
            last_error: None,
            filtered_by: None,
        })
        .collect();
    Ok(NewEvent {
        tenant: tenant.to_string(),
        event,
        deliveries,
    })
}

async fn write_loop(
    store: Store,
    dispatch: DispatchHandle,
    mut rx: mpsc::Receiver<Vec<Submission>>,
) {
    // A group takes every message waiting; it may pass MAX_GROUP_COMMIT events by at most one
    // batch, since a batch is never split.
    while let Some(mut group) = rx.recv().await {
        while group.len() < MAX_GROUP_COMMIT
            && let Ok(more) = rx.try_recv()
        {
            group.extend(more);
        }
        commit_group(&store, &dispatch, group).await;
    }
}

async fn commit_group(store: &Store, dispatch: &DispatchHandle, group: Vec<Submission>) {
    let now = now_ms();
    let mut to_write = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    // (tenant, idempotency key) → event id, for keys seen earlier in this same group.
    let mut seen: HashMap<(String, String), EventId> = HashMap::new();
    for submission in group {
        let Submission {
            event,
            idempotency_window_ms,
            reply,
        } = submission;
        if let Some(key) = &event.event.idempotency_key {
            let seen_key = (event.tenant.clone(), key.clone());
            let existing = match seen.get(&seen_key) {
                Some(id) => Ok(Some(id.clone())),
                None => store.idempotent_event(&event.tenant, key, idempotency_window_ms, now),
            };
            match existing {
                Ok(Some(id)) => {
                    replies.push((reply, Some(id)));
                    continue;
                }
                Ok(None) => {
                    seen.insert(seen_key, event.event.id.clone());
                }
                Err(err) => {
                    let _ = reply.send(Err(err.into()));
                    continue;
                }
            }
        }
        to_write.push(event);
        replies.push((reply, None));
    }

    let written = match store.write_events(&to_write) {
        Ok(()) => store.flush().await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        warn!(error = %err, events = to_write.len(), "ingest write failed; the events were refused");
        let message = err.to_string();
        for (reply, _) in replies {
            let refusal = match &err {
                // Refused before writing (full or read-only data dir): its own code.
                StoreError::Space(problem) => IngestError::Store(StoreError::Space(*problem)),
                _ => IngestError::Unavailable(message.clone()),
            };
            let _ = reply.send(Err(refusal));
        }
        return;
    }
    for (reply, duplicate) in replies {
        let outcome = match duplicate {
            Some(id) => IngestOutcome::Duplicate(id),
            None => IngestOutcome::Created,
        };
        let _ = reply.send(Ok(outcome));
    }
    for new in &to_write {
        for delivery in &new.deliveries {
            if let Some(due) = delivery.next_attempt_at {
                dispatch.enqueued(&new.tenant, &delivery.webhook_id, due);
            }
        }
    }
}
