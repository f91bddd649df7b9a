//! The attempt recorder: group commit for attempt outcomes.
//!
//! Every finished attempt hands its record and delivery update to one recorder task, which
//! gives all outcomes waiting at that moment to the store as one group
//! ([`Store::record_attempts`]: attempt log, delivery state, schedule entry and statistics
//! counters for each). Under load many attempts share one write. Outcomes are not flushed
//! here: a crash before the store's periodic flush only makes the delivery due again (same
//! `webhook-id`), which the delivery contract allows.
//!
//! Under load the recorder lingers ([`LINGER`]) before taking a group, so each of the store's
//! group commits carries more outcomes: a commit has a fixed cost (sled's batch seals and
//! writes its I/O buffers twice and wakes its I/O threads), and nobody waits on an outcome but
//! the webhook's claim (which has room for it, `CLAIMS_PER_SLOT`). A lone outcome is written
//! at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{AttemptOutcome, Store, StoreError};

/// Most outcomes written in one transaction.
const MAX_GROUP: usize = 512;
/// How long the recorder waits for more outcomes once it has seen two at a time.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Handle for recording outcomes; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<(AttemptOutcome, Reply)>,
}

impl Recorder {
    /// Starts the recorder task. It ends when every `Recorder` handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Recorder { tx }, tokio::spawn(record_loop(store, rx)))
    }

    /// Records one outcome (with whatever else is waiting).
    pub async fn record(&self, outcome: AttemptOutcome) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((outcome, reply))
            .map_err(|_| StoreError::Interrupted("the recorder has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Interrupted("the recorder has stopped".into()))?
    }
}

async fn record_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(AttemptOutcome, Reply)>,
) {
    let mut group = Vec::with_capacity(64);
    let mut busy = false;
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        busy |= group.len() > 1;
        if busy {
            tokio::time::sleep(LINGER).await;
            while group.len() < MAX_GROUP
                && let Ok(outcome) = rx.try_recv()
            {
                group.push(outcome);
            }
        }
        busy = group.len() > 1;
        let (outcomes, replies): (Vec<AttemptOutcome>, Vec<Reply>) = group.drain(..).unzip();
        match store.record_attempts(outcomes).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                let message = err.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Interrupted(message.clone())));
                }
            }
        }
    }
}
