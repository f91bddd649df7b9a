//! Replay at start: the records after sled's checkpoint are applied again, in chunks.

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
}
