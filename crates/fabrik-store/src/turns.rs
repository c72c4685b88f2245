//! One at a time per key: the turns that keep reads of one missing segment (the segment cache)
//! or of one evicted blob from each fetching it from the bucket. The first read takes the
//! turn and fetches; the others wait for it, then find the copy it left.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// Per key, its lock and how many turns (held or awaited) there are for it.
type Locks<K> = Arc<Mutex<HashMap<K, (Arc<tokio::sync::Mutex<()>>, usize)>>>;

/// The turns for keys of type `K`: a lock per key while any read holds or waits for it. The
/// turns are counted, not inferred from the lock's reference count, so two turns ending at once
/// on two threads cannot both leave the key's entry behind.
#[derive(Debug)]
pub(crate) struct Turns<K> {
    locks: Locks<K>,
}

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Self {
            locks: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> Turns<K> {
    /// Waits for `key`'s turn. Ending it (dropping the [`Turn`], on any return, or cancelling
    /// the wait) forgets the key's lock once no read holds or waits for it.
    pub(crate) async fn take(&self, key: &K) -> Turn<K> {
        let lock = {
            let mut locks = self.locks.lock();
            let (lock, turns) = locks.entry(key.clone()).or_default();
            *turns += 1;
            lock.clone()
        };
        let mut turn = Turn {
            locks: self.locks.clone(),
            key: key.clone(),
            guard: None,
        };
        // Cancelled here, `turn` is dropped without a guard and still cleans up.
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    /// Whether no read holds or waits for any key.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.locks.lock().is_empty()
    }
}

/// A read's turn for one key (or its wait for it).
pub(crate) struct Turn<K: Eq + Hash> {
    locks: Locks<K>,
    key: K,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash> Drop for Turn<K> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock();
        drop(self.guard.take());
        if let Some((_, turns)) = locks.get_mut(&self.key) {
            *turns -= 1;
            if *turns == 0 {
                locks.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_of_one_key_take_turns_and_leave_no_lock_behind() {
        let turns = Arc::new(Turns::<u32>::default());
        let inside = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (turns, inside) = (turns.clone(), inside.clone());
                tokio::spawn(async move {
                    let _turn = turns.take(&7).await;
                    let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(now, 0, "two reads held one key's turn at once");
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert!(turns.is_idle());
    }

    /// On one thread, so the waiting read is woken by the holder leaving but cancelled before
    /// it runs again: its lock must still be forgotten.
    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_cancelled_as_the_turn_comes_leaves_no_lock_behind() {
        let turns = Arc::new(Turns::<u32>::default());
        let held = turns.take(&1).await;
        // Another key is not held up by a held one.
        drop(turns.take(&2).await);
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.take(&1).await) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.abort();
        assert!(waiting.await.is_err_and(|e| e.is_cancelled()));
        assert!(turns.is_idle());
    }
}
