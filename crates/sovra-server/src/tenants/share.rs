//! Fair shares of the machine between tenants with a concurrency quota.
//!
//! A `max_concurrent_requests` quota of K lets a tenant keep K requests in
//! progress. Alone on the server that is what it should have; beside other
//! busy tenants, K requests kept busy by a closed-loop client can be every
//! core the server has (measured: a quota of 2 on 2 cores raised another
//! tenant's p99 by 37%, `bench/RESULTS.md`). So while more than one tenant
//! is busy (had a request within [`BUSY_WINDOW`]), a tenant with a quota is
//! held to its share of `server.tenant_shared_requests` (by default the
//! number of cores): that number divided by the busy tenants, at least 1, at
//! most its quota. Alone, it has its whole quota.
//!
//! The quota and the share are one first-come-first-served semaphore
//! ([`Gate`]) whose permits follow the share: fewer when others are busy
//! (permits in use are taken back as they are returned), more again when
//! they are not. Requests over it wait before any of the server's work is
//! done for them, in the order they came.
//!
//! The count of busy tenants is taken from the platform's `last_used` map at
//! most every [`RECOUNT`], by whichever request needs it; nothing runs on a
//! timer, so an idle server pays nothing for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A tenant counts as busy for this long after its last request.
pub(super) const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// How stale the count of busy tenants may be.
pub(super) const RECOUNT: Duration = Duration::from_millis(100);

/// The server-wide part: the shared budget and the busy tenants.
#[derive(Debug)]
pub(super) struct Shares {
    budget: usize,
    started: Instant,
    /// Busy tenants as last counted (at least 1).
    busy: AtomicUsize,
    /// When they were counted, in microseconds since `started`, plus one
    /// (0: never).
    counted_at: AtomicU64,
}

impl Shares {
    /// Shares of `budget` requests in progress (0: the cores the server may
    /// use).
    pub(super) fn new(budget: u64) -> Shares {
        let budget = match usize::try_from(budget) {
            Ok(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Ok(n) => n,
            Err(_) => usize::MAX,
        };
        Shares {
            budget,
            started: Instant::now(),
            busy: AtomicUsize::new(1),
            counted_at: AtomicU64::new(0),
        }
    }

    /// The requests a tenant with a concurrency quota of `quota` may have
    /// in progress now, counting the busy tenants again from `last_used`
    /// when the count is older than [`RECOUNT`] (and the map is free).
    pub(super) fn cap(
        &self,
        quota: usize,
        last_used: &Mutex<HashMap<String, Instant>>,
        now: Instant,
    ) -> usize {
        let at = u64::try_from(now.saturating_duration_since(self.started).as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let counted = self.counted_at.load(Ordering::Relaxed);
        let stale = counted == 0
            || at.saturating_sub(counted) >= u64::try_from(RECOUNT.as_micros()).unwrap_or(u64::MAX);
        if stale {
            let used = match last_used.try_lock() {
                Ok(used) => Some(used),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                // Another request holds it: count at the next request.
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(used) = used {
                let busy = used
                    .values()
                    .filter(|last| now.saturating_duration_since(**last) < BUSY_WINDOW)
                    .count();
                drop(used);
                self.busy.store(busy.max(1), Ordering::Relaxed);
                self.counted_at.store(at, Ordering::Relaxed);
            }
        }
        share(self.budget, self.busy.load(Ordering::Relaxed), quota)
    }
}

/// The share of `budget` of one of `busy` tenants whose quota is `quota`:
/// alone, the whole quota.
pub(super) fn share(budget: usize, busy: usize, quota: usize) -> usize {
    let quota = quota.max(1);
    if busy <= 1 {
        quota
    } else {
        (budget / busy).clamp(1, quota)
    }
}

/// A tenant's concurrency quota: a first-come-first-served semaphore whose
/// permits are its current share ([`Gate::set_limit`]).
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    state: Mutex<Limit>,
}

#[derive(Debug)]
struct Limit {
    /// Permits the semaphore stands for now (in use or not).
    limit: usize,
    /// Permits in use that are to be taken back when returned.
    debt: usize,
}

/// A request's turn: returned (or taken back, when the share shrank) when
/// dropped.
#[derive(Debug)]
pub(crate) struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    gate: Arc<Gate>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut state = self
            .gate
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        }
    }
}

impl Gate {
    /// A gate of `quota` requests at once (at least 1).
    pub(crate) fn new(quota: usize) -> Arc<Gate> {
        let quota = quota.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Gate {
            permits: Arc::new(Semaphore::new(quota)),
            state: Mutex::new(Limit {
                limit: quota,
                debt: 0,
            }),
        })
    }

    /// Whether a request now would wait.
    pub(crate) fn full(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Makes the gate stand for `limit` requests at once: permits free now
    /// are taken at once, permits in use when they are returned; a larger
    /// limit first cancels what is still to be taken back.
    pub(crate) fn set_limit(&self, limit: usize) {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limit < state.limit {
            let fewer = state.limit - limit;
            let taken = self.permits.forget_permits(fewer);
            state.debt += fewer - taken;
        } else if limit > state.limit {
            let more = limit - state.limit;
            let cancelled = more.min(state.debt);
            state.debt -= cancelled;
            self.permits.add_permits(more - cancelled);
        }
        state.limit = limit;
    }

    /// Waits for a turn, first come first served.
    pub(crate) async fn enter(self: &Arc<Self>) -> Turn {
        let permit = self.permits.clone().acquire_owned().await.ok();
        Turn {
            permit,
            gate: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_the_budget_over_the_busy_tenants_within_one_and_the_quota() {
        // Alone: the whole quota, whatever the budget.
        assert_eq!(share(2, 1, 2), 2);
        assert_eq!(share(8, 1, 2), 2);
        assert_eq!(share(2, 1, 8), 8);
        // Two busy tenants on two cores: one each.
        assert_eq!(share(2, 2, 2), 1);
        assert_eq!(share(2, 2, 1), 1);
        // Never below one, so every tenant makes progress.
        assert_eq!(share(2, 50, 4), 1);
        // Never above the quota.
        assert_eq!(share(16, 2, 3), 3);
        assert_eq!(share(16, 2, 100), 8);
        // A count of zero busy tenants is read as one: the whole quota.
        assert_eq!(share(4, 0, 10), 10);
    }

    #[test]
    fn busy_tenants_are_those_with_a_request_in_the_window() {
        let shares = Shares::new(4);
        let now = Instant::now();
        let used = Mutex::new(HashMap::new());
        assert_eq!(shares.cap(10, &used, now), 10);
        {
            let mut map = used.lock().unwrap();
            map.insert("a".to_owned(), now);
            map.insert("b".to_owned(), now);
            map.insert("idle".to_owned(), now - BUSY_WINDOW * 2);
        }
        // The count is not taken again before RECOUNT has passed.
        assert_eq!(shares.cap(10, &used, now), 10);
        let later = now + RECOUNT;
        assert_eq!(shares.cap(10, &used, later), 2);
        // While another request holds the map, the last count stands.
        {
            let _held = used.lock().unwrap();
            assert_eq!(shares.cap(10, &used, later + RECOUNT), 2);
        }
        // Once the window has passed for everyone, the whole quota again.
        let much_later = now + BUSY_WINDOW + RECOUNT * 2;
        assert_eq!(shares.cap(10, &used, much_later), 10);
    }

    #[tokio::test]
    async fn a_gate_serves_the_limit_at_once_in_the_order_requests_came() {
        let gate = Gate::new(2);
        let first = gate.enter().await;
        let second = gate.enter().await;
        assert!(gate.full());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for n in 0..4 {
            let (gate, tx) = (gate.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let turn = gate.enter().await;
                tx.send(n).unwrap();
                turn
            }));
            // Each is queued before the next comes.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(rx.try_recv().is_err(), "nobody passes a full gate");
        drop(first);
        assert_eq!(rx.recv().await, Some(0));
        drop(second);
        assert_eq!(rx.recv().await, Some(1));
        let third = tasks.remove(0).await.unwrap();
        drop(third);
        assert_eq!(rx.recv().await, Some(2));
        for task in tasks {
            drop(task.await.unwrap());
        }
        assert_eq!(rx.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_smaller_limit_takes_back_permits_as_they_are_returned() {
        let gate = Gate::new(2);
        let a = gate.enter().await;
        let b = gate.enter().await;
        gate.set_limit(1);
        drop(a);
        // The returned permit was taken back: still one in use, gate full.
        assert!(gate.full());
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request got its turn")
            .unwrap();
        assert!(gate.full(), "one at a time");
        // The limit grows again: a second turn at once.
        gate.set_limit(2);
        let d = tokio::time::timeout(Duration::from_secs(5), gate.enter())
            .await
            .expect("a second turn once the limit grew");
        assert!(gate.full());
        drop((c, d));
        assert_eq!(gate.permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_limit_that_shrinks_and_grows_while_in_use_ends_where_it_should() {
        let gate = Gate::new(3);
        let turns: Vec<Turn> = vec![gate.enter().await, gate.enter().await, gate.enter().await];
        gate.set_limit(1); // two to take back
        gate.set_limit(2); // one of them cancelled
        drop(turns);
        assert_eq!(gate.permits.available_permits(), 2);
        gate.set_limit(3);
        assert_eq!(gate.permits.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_larger_limit_lets_waiting_requests_in_without_a_release() {
        let gate = Gate::new(2);
        gate.set_limit(1);
        let _first = gate.enter().await;
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        gate.set_limit(2);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request got in")
            .unwrap();
    }
}
