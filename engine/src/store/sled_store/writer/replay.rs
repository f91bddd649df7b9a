//! Replay at start: the records after sled's checkpoint are applied again, in chunks; and the
//! repair of a log that lost its unsynced tail while sled kept its pages (a power loss).

use super::*;

impl WriterState {
    /// Replays every record after `checkpoint` into sled (what sled had not written when the
    /// process stopped), in chunks, each committed with the checkpoint after its last record;
    /// returns how many records were replayed.
    pub fn replay_from(&mut self, checkpoint: Locator) -> Result<usize> {
        let log = self.shared.log.clone();
        let mut batch = Batch::default();
        let mut total = 0;
        let mut next = checkpoint;
        let mut failure = None;
        let scanned = log.scan_from(checkpoint, |loc, record| {
            if let Err(err) = self.apply_record(&mut batch, loc, &record) {
                failure = Some(err);
                return Err(StoreError::Interrupted("replay stopped".into()));
            }
            total += 1;
            next = Locator {
                segment: loc.segment,
                offset: loc.offset + record.header.total_len() as u32,
            };
            if batch.records >= REPLAY_CHUNK {
                let mut full = std::mem::take(&mut batch);
                self.write_group_to(&mut full, next)?;
            }
            Ok(())
        });
        if let Some(err) = failure {
            return Err(err);
        }
        scanned?;
        self.write_group_to(&mut batch, next)?;
        Ok(total)
    }

    /// After a power loss that kept sled's pages but not the log's tail before sled's
    /// checkpoint, the events in `lost` are gone. None was acknowledged (a 202 waits for the
    /// log's sync), but sled still schedules their deliveries: each is taken out of its
    /// webhook's schedule, counted as failed for its day and no longer pending for its tenant,
    /// in one batch committed with the checkpoint (`lost.end`). The lost ids are never reused:
    /// the log resumes after the checkpoint. Returns how many deliveries were dropped.
    pub fn drop_lost(&mut self, lost: std::ops::Range<Locator>) -> Result<usize> {
        let mut webhooks = Vec::new();
        for key in self.tree().scan_prefix([keys::WEBHOOK]).keys() {
            if let Some((tenant, webhook)) = keys::split_webhook_key(&key?) {
                webhooks.push((tenant.to_string(), webhook));
            }
        }
        let mut batch = Batch::default();
        let mut dropped = 0;
        for (tenant, webhook) in webhooks {
            let mut gone = Vec::new();
            for page in self.tree().scan_prefix(keys::queue_of(&tenant, &webhook)) {
                let (_, value) = page?;
                gone.extend(
                    pages::decode_queue_page(&value)?
                        .into_iter()
                        .filter(|entry| lost.contains(&entry.delivery.event)),
                );
            }
            for entry in gone {
                self.queue_remove(&mut batch, &tenant, &webhook, entry.due, entry.delivery)?;
                batch.stats.transition(
                    &tenant,
                    &webhook,
                    None,
                    entry.created_at,
                    DeliveryStatus::Pending,
                    DeliveryStatus::Failed,
                    None,
                );
                self.count_queued(&mut batch, &tenant, entry.delivery.event.segment, false)?;
                dropped += 1;
            }
        }
        self.write_group_to(&mut batch, lost.end)?;
        Ok(dropped)
    }
}
