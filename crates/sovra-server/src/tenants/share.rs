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
//! most its quota. Requests over the share wait their turn (in the order
//! they came, within [`RECHECK`]), before any of the server's work is done
//! for them.
//!
//! The count of busy tenants is taken from the platform's `last_used` map at
//! most every [`RECOUNT`], by whichever request needs it; nothing runs on a
//! timer, so an idle server pays nothing for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A tenant counts as busy for this long after its last request.
pub(super) const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// How stale the count of busy tenants may be.
pub(super) const RECOUNT: Duration = Duration::from_millis(100);

/// How long a waiting request sleeps before it looks at its share again
/// (the share grows when other tenants fall idle, which wakes nobody).
const RECHECK: Duration = Duration::from_millis(20);

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
        if stale
            && self
                .counted_at
                .compare_exchange(counted, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Ok(used) = last_used.try_lock()
        {
            let busy = used
                .values()
                .filter(|last| now.saturating_duration_since(**last) < BUSY_WINDOW)
                .count();
            self.busy.store(busy.max(1), Ordering::Relaxed);
        }
        share(self.budget, self.busy.load(Ordering::Relaxed), quota)
    }
}

/// The share of `budget` of one of `busy` tenants whose quota is `quota`.
pub(super) fn share(budget: usize, busy: usize, quota: usize) -> usize {
    (budget / busy.max(1)).clamp(1, quota.max(1))
}

/// One tenant's requests past its share's gate.
#[derive(Debug, Default)]
pub(crate) struct Running {
    count: AtomicUsize,
    done: Notify,
}

/// A request in progress within its tenant's share; leaving frees its place.
#[derive(Debug)]
pub(crate) struct Place(Arc<Running>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_one();
    }
}

impl Running {
    /// Requests of this tenant in progress past the gate.
    #[cfg(test)]
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until this tenant has fewer than `cap()` requests in progress,
    /// then takes a place. `cap` is asked again after every wait.
    pub(super) async fn enter(self: &Arc<Self>, cap: impl Fn() -> usize) -> Place {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.count.load(Ordering::Acquire);
            if now < cap() {
                if self
                    .count
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Place(self.clone());
                }
                continue;
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_the_budget_over_the_busy_tenants_within_one_and_the_quota() {
        // Alone: the whole quota, up to the budget.
        assert_eq!(share(2, 1, 2), 2);
        assert_eq!(share(8, 1, 2), 2);
        // Two busy tenants on two cores: one each.
        assert_eq!(share(2, 2, 2), 1);
        assert_eq!(share(2, 2, 1), 1);
        // Never below one, so every tenant makes progress.
        assert_eq!(share(2, 50, 4), 1);
        // Never above the quota.
        assert_eq!(share(16, 2, 3), 3);
        assert_eq!(share(16, 2, 100), 8);
        // A count of zero busy tenants is read as one.
        assert_eq!(share(4, 0, 10), 4);
    }

    #[test]
    fn busy_tenants_are_those_with_a_request_in_the_window() {
        let shares = Shares::new(4);
        let now = Instant::now();
        let used = Mutex::new(HashMap::new());
        assert_eq!(shares.cap(10, &used, now), 4);
        {
            let mut map = used.lock().unwrap();
            map.insert("a".to_owned(), now);
            map.insert("b".to_owned(), now);
            map.insert("idle".to_owned(), now - BUSY_WINDOW * 2);
        }
        // The count is not taken again before RECOUNT has passed.
        assert_eq!(shares.cap(10, &used, now), 4);
        let later = now + RECOUNT;
        assert_eq!(shares.cap(10, &used, later), 2);
        // Once the window has passed for everyone, the whole budget again.
        let much_later = now + BUSY_WINDOW + RECOUNT * 2;
        assert_eq!(shares.cap(10, &used, much_later), 4);
    }

    #[tokio::test]
    async fn requests_over_the_share_wait_for_a_place() {
        let running = Arc::new(Running::default());
        let cap = Arc::new(AtomicUsize::new(2));
        let first = running.enter(|| cap.load(Ordering::Relaxed)).await;
        let second = running.enter(|| cap.load(Ordering::Relaxed)).await;
        assert_eq!(running.count(), 2);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (running, cap, inside, most) =
                (running.clone(), cap.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let place = running.enter(|| cap.load(Ordering::Relaxed)).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(place);
            }));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "nobody passes a full share"
        );
        drop(first);
        drop(second);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("every waiting request got its turn")
                .unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "at most the share at once");
        assert_eq!(running.count(), 0);
    }

    #[tokio::test]
    async fn a_share_that_grows_lets_waiting_requests_in_without_a_release() {
        let running = Arc::new(Running::default());
        let cap = Arc::new(AtomicUsize::new(1));
        let _first = running.enter(|| cap.load(Ordering::Relaxed)).await;
        let waiting = {
            let running = running.clone();
            let cap = cap.clone();
            tokio::spawn(async move { running.enter(|| cap.load(Ordering::Relaxed)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // Another tenant fell idle: the share is 2 now.
        cap.store(2, Ordering::Relaxed);
        let place = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the waiting request got in")
            .unwrap();
        assert_eq!(running.count(), 2);
        drop(place);
    }
}
