//! The outbox as the forwarder sees it in a live run: records it reads from the store, and
//! records the upstream broker acknowledged, which wait for the engine's next commit to be
//! deleted (one commit per `commit_interval` holds the input, the records and the deletes).
//! Until then the forwarder's reads skip them, so a reconnect never sends them again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::mqtt::forwarder::Outbox;
use crate::store::{OutboxEntry, Salvage, Store};

/// Outbox records acknowledged upstream and not yet deleted.
#[derive(Debug, Default)]
pub struct Acknowledged(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Every acknowledged sequence not yet deleted.
    pending: HashSet<u64>,
    /// Those not yet handed to a commit, in the order acknowledged.
    waiting: Vec<u64>,
}

impl Acknowledged {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The forwarder got the broker's PUBACK for these.
    pub fn add(&self, seqs: &[u64]) {
        let mut inner = self.lock();
        for &seq in seqs {
            if inner.pending.insert(seq) {
                inner.waiting.push(seq);
            }
        }
    }

    /// The sequences for the next commit to delete.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// Whether there are deletes waiting for a commit.
    pub fn any_waiting(&self) -> bool {
        !self.lock().waiting.is_empty()
    }

    /// The commit holding these deletes is durable.
    pub fn deleted(&self, seqs: &[u64]) {
        let mut inner = self.lock();
        for seq in seqs {
            inner.pending.remove(seq);
        }
    }

    /// The commit holding these deletes failed: the next one carries them.
    pub fn put_back(&self, seqs: Vec<u64>) {
        let mut inner = self.lock();
        let later = std::mem::replace(&mut inner.waiting, seqs);
        inner.waiting.extend(later);
    }

    fn contains(&self, seq: u64) -> bool {
        self.lock().pending.contains(&seq)
    }

    /// How many are acknowledged and not yet deleted.
    fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// The store's outbox with acknowledged records deleted by the engine's commits.
#[derive(Debug)]
pub struct CommittedOutbox {
    pub store: Arc<Store>,
    pub acked: Arc<Acknowledged>,
}

impl Outbox for CommittedOutbox {
    fn read(&self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<OutboxEntry>> {
        let mut entries = self.store.read_outbox_entries(after, max)?;
        entries.retain(|e| !matches!(e, OutboxEntry::Record(seq, _) if self.acked.contains(*seq)));
        Ok(entries)
    }

    fn delete(&self, seqs: &[u64]) -> anyhow::Result<()> {
        self.acked.add(seqs);
        Ok(())
    }

    fn set_aside(&self, entries: &[(u64, String)]) -> anyhow::Result<usize> {
        Ok(self.store.set_aside(entries)?)
    }

    fn salvage(&self) -> anyhow::Result<Salvage> {
        Ok(self.store.salvage_outbox()?)
    }

    fn len(&self) -> u64 {
        self.store
            .outbox_len()
            .saturating_sub(self.acked.pending() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_records_wait_for_a_commit_and_come_back_if_it_fails() {
        let a = Acknowledged::default();
        a.add(&[3, 1, 3]);
        assert_eq!(a.pending(), 2);
        let taken = a.take();
        assert_eq!(taken, vec![3, 1]);
        assert!(!a.any_waiting());
        assert!(a.contains(3), "still skipped until deleted");
        a.add(&[5]);
        a.put_back(taken);
        assert_eq!(
            a.take(),
            vec![3, 1, 5],
            "a failed commit's deletes go first"
        );
        a.deleted(&[3, 1, 5]);
        assert!(a.pending() == 0 && !a.contains(1));
    }
}
