//! Calls finished in the background after their client went away.
//!
//! Once a request has gone to the upstream, the upstream does the work and charges for it
//! whether or not anyone reads the answer. When hyper drops a request's future because its client
//! hung up (or the request deadline passed) while the call was at the upstream, the meter hands
//! the call's future to a task that waits for the answer and reads it, so the credits still reach
//! the ledger and the client's budget (a client could otherwise spend past its budget by hanging
//! up on every call). Likewise a metered body dropped before its end while its credits are still
//! unknown is read to its end for its `_meta` (see `body`). [`Detached`] counts those tasks so
//! that a graceful stop can wait for them before it closes the ledger.
//!
//! Their number is bounded by what was admitted upstream: each one is a call that took a
//! rate-limit slot, and lives at most `upstream.timeout` for the answer plus `upstream.timeout`
//! (and 16 MiB) to read its body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How many calls are being finished in the background; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Detached(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

impl Detached {
    /// Counts one more background call until the guard is dropped.
    pub fn enter(&self) -> DetachedGuard {
        self.0.running.fetch_add(1, Ordering::SeqCst);
        DetachedGuard(self.clone())
    }

    /// Background calls still running.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::SeqCst)
    }

    /// Returns once no background call is running.
    pub async fn idle(&self) {
        loop {
            // Registered before the check: a guard dropped in between still wakes this.
            let notified = self.0.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One background call; see [`Detached::enter`].
#[derive(Debug)]
pub struct DetachedGuard(Detached);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        if self.0 .0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let detached = Detached::default();
        detached.idle().await;
        let a = detached.enter();
        let b = detached.enter();
        assert_eq!(detached.running(), 2);
        let waiter = tokio::spawn({
            let detached = detached.clone();
            async move { detached.idle().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(detached.running(), 0);
    }
}
