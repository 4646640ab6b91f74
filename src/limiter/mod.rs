//! The limiter (SPEC §6): per-client limits for fairness, then one budget for the shared
//! upstream key, with a short wait for a slot before a polite 429.
//!
//! Fairness rule: requests that must wait for the upstream budget queue per client, and each
//! free slot goes to the next client in round-robin order (first come, first served within a
//! client). A client with fifty requests waiting and a client with one each get every other
//! slot; a busy client cannot take all the slots that free up while others wait.
//!
//! A waiting request holds no lock and no upstream connection: it waits on a one-shot channel
//! that a single dispatcher task fills when the budget frees a slot. A request whose wait would
//! exceed `max_wait` (judged from the budget's next slot and the queue ahead of it) is refused
//! at once rather than after waiting in vain.

mod budget;
mod clock;
mod fair_queue;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{Quota, RateLimiter};
use tokio::sync::{oneshot, Notify};

pub use budget::{Ticket, UpstreamReport};
pub use clock::LimiterClock;

use crate::config::{Client, ClientId, Config};
use budget::UpstreamBudget;
use fair_queue::FairQueue;

/// Why a request did not get a slot, and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: Duration,
    pub scope: Scope,
    pub status: RateLimitStatus,
}

/// Whose limit refused the request (the `scope` label of the rate-limited metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Client,
    Upstream,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
        }
    }
}

/// What the `RateLimit-Limit`, `-Remaining` and `-Reset` headers say: on an answer, the tighter
/// of the client's own limit and the upstream budget, in the current minute; on a refusal, the
/// limit that refused, with nothing remaining until its `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub limit: u32,
    pub remaining: u32,
    pub reset: Duration,
}

/// A cheap handle on the shared limiter.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    clock: LimiterClock,
    state: Mutex<State>,
    /// Wakes the dispatcher: a request joined the queue, or the budget may have changed.
    wake: Arc<Notify>,
    /// Per-client limiters, rebuilt on reload (keeping the state of unchanged ones). Only
    /// configured clients get here, so this never grows with traffic.
    clients: ArcSwap<HashMap<ClientId, Arc<ClientLimit>>>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct State {
    budget: UpstreamBudget,
    queue: FairQueue,
    max_wait: Duration,
}

type DirectLimiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    LimiterClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// One client's `requests_per_minute`.
struct ClientLimit {
    per_minute: NonZeroU32,
    gcra: DirectLimiter,
    /// Requests admitted in the current wall-clock minute, for the headers: `minute << 32 | n`.
    counter: AtomicU64,
}

impl Limiter {
    /// A limiter for this configuration; spawns its dispatcher on the current tokio runtime.
    pub fn new(config: &Config) -> Self {
        Self::with_clock(config, LimiterClock::new())
    }

    pub fn with_clock(config: &Config, clock: LimiterClock) -> Self {
        let rate = &config.rate_limit;
        let inner = Arc::new(Inner {
            clock,
            state: Mutex::new(State {
                budget: UpstreamBudget::new(clock, rate.requests_per_minute.get(), rate.headroom),
                queue: FairQueue::default(),
                max_wait: rate.max_wait,
            }),
            wake: Arc::new(Notify::new()),
            clients: ArcSwap::from_pointee(HashMap::new()),
            dispatcher: Mutex::new(None),
        });
        let limiter = Self { inner };
        limiter.reconfigure(config);
        let task = tokio::spawn(dispatch(
            Arc::downgrade(&limiter.inner),
            Arc::clone(&limiter.inner.wake),
        ));
        *lock(&limiter.inner.dispatcher) = Some(task);
        limiter
    }

    /// Applies reloaded limits: `max_wait`, client limits (unchanged ones keep their state).
    /// The upstream's learned limit stays; `requests_per_minute` is only its starting value.
    pub fn reconfigure(&self, config: &Config) {
        lock(&self.inner.state).max_wait = config.rate_limit.max_wait;
        let old = self.inner.clients.load();
        let clients = config
            .clients
            .clients
            .iter()
            .filter_map(|client| {
                let per_minute = client.requests_per_minute?;
                let limit = match old.get(&client.id) {
                    Some(limit) if limit.per_minute == per_minute => Arc::clone(limit),
                    _ => Arc::new(ClientLimit::new(per_minute, self.inner.clock)),
                };
                Some((client.id.clone(), limit))
            })
            .collect();
        self.inner.clients.store(Arc::new(clients));
        self.inner.wake.notify_one();
    }

    /// Waits up to `max_wait` for a slot under the client's limit and then the upstream budget.
    pub async fn acquire(&self, client: &Client) -> Result<Ticket, Refusal> {
        let clock = self.inner.clock;
        let max_wait = lock(&self.inner.state).max_wait;
        let deadline = clock.elapsed() + max_wait;

        let client_limit = self.inner.clients.load().get(&client.id).cloned();
        if let Some(limit) = &client_limit {
            loop {
                match limit.gcra.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let now = clock.elapsed();
                        let wait = not_until.wait_time_from(now);
                        if now + wait > deadline {
                            return Err(self.refusal(client, wait, Scope::Client));
                        }
                        tokio::time::sleep_until(clock.instant_at(now + wait)).await;
                    }
                }
            }
            limit.count(clock);
        }

        let receiver = {
            let mut state = lock(&self.inner.state);
            let now = clock.elapsed();
            let left = deadline.saturating_sub(now);
            if state.queue.is_empty() {
                match state.budget.try_take() {
                    Ok(ticket) => return Ok(ticket),
                    Err(wait) if wait > left => {
                        drop(state);
                        return Err(self.refusal(client, wait, Scope::Upstream));
                    }
                    Err(_) => {}
                }
            }
            let ahead = state.queue.ahead_of(&client.id);
            let estimate = state.budget.wait() + state.budget.slot_interval() * ahead;
            if estimate > left {
                drop(state);
                return Err(self.refusal(client, estimate, Scope::Upstream));
            }
            let (sender, receiver) = oneshot::channel();
            state.queue.push(client.id.clone(), sender);
            receiver
        };
        self.inner.wake.notify_one();
        match tokio::time::timeout_at(clock.instant_at(deadline), receiver).await {
            Ok(Ok(ticket)) => Ok(ticket),
            // Timed out (the dispatcher skips closed waiters), or the limiter is gone.
            _ => {
                let wait = lock(&self.inner.state)
                    .budget
                    .wait()
                    .max(Duration::from_millis(1));
                Err(self.refusal(client, wait, Scope::Upstream))
            }
        }
    }

    /// The ticket's request is over. Call [`Limiter::observe`] first with what the answer said.
    pub fn finish(&self, ticket: Ticket) {
        let waiting = {
            let mut state = lock(&self.inner.state);
            state.budget.finish(ticket);
            !state.queue.is_empty()
        };
        // Waking the dispatcher only matters to requests that wait; most of the time none do.
        if waiting {
            self.inner.wake.notify_one();
        }
    }

    /// What an answer said about the upstream's limits.
    pub fn observe(&self, ticket: Ticket, report: UpstreamReport) {
        if report == UpstreamReport::default() {
            return;
        }
        let waiting = {
            let mut state = lock(&self.inner.state);
            state.budget.observe(ticket, report);
            !state.queue.is_empty()
        };
        if waiting {
            self.inner.wake.notify_one();
        }
    }

    /// The upstream answered 429: pause all forwarding.
    pub fn pause(&self, retry_after: Option<Duration>) {
        lock(&self.inner.state).budget.pause(retry_after);
        tracing::warn!(
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "upstream answered 429; pausing all forwarding"
        );
    }

    /// How long until the upstream budget has a slot.
    pub fn upstream_wait(&self) -> Duration {
        lock(&self.inner.state).budget.wait()
    }

    /// The upstream limit in force (learned, else configured).
    pub fn upstream_limit(&self) -> u32 {
        lock(&self.inner.state).budget.limit()
    }

    /// The tighter of the client's limit and the upstream budget.
    pub fn status(&self, client: &Client) -> RateLimitStatus {
        let budget = lock(&self.inner.state).budget.status();
        let upstream = RateLimitStatus {
            limit: budget.limit,
            remaining: budget.remaining,
            reset: budget.reset,
        };
        match self.inner.clients.load().get(&client.id) {
            Some(limit) => {
                let own = limit.status(self.inner.clock);
                if own.remaining < upstream.remaining {
                    own
                } else {
                    upstream
                }
            }
            None => upstream,
        }
    }

    /// A 429 from `scope`'s limit. Its `RateLimit-*` headers speak for the limit that refused:
    /// nothing remains, and the reset is when the request could have gone (its `Retry-After`),
    /// so they never tell the client it may send what was just refused.
    pub fn refusal(&self, client: &Client, retry_after: Duration, scope: Scope) -> Refusal {
        // The headers round both to whole seconds the same way only from a millisecond on.
        let retry_after = retry_after.max(Duration::from_millis(1));
        let own_limit = match scope {
            Scope::Client => self
                .inner
                .clients
                .load()
                .get(&client.id)
                .map(|limit| limit.per_minute.get()),
            Scope::Upstream => None,
        };
        let limit = own_limit.unwrap_or_else(|| lock(&self.inner.state).budget.status().limit);
        Refusal {
            retry_after,
            scope,
            status: RateLimitStatus {
                limit,
                remaining: 0,
                reset: retry_after,
            },
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.dispatcher).take() {
            task.abort();
        }
    }
}

impl ClientLimit {
    fn new(per_minute: NonZeroU32, clock: LimiterClock) -> Self {
        Self {
            per_minute,
            gcra: RateLimiter::direct_with_clock(window_quota(per_minute), clock),
            counter: AtomicU64::new(0),
        }
    }

    fn count(&self, clock: LimiterClock) {
        let minute = clock.minute_of(clock.elapsed()) & 0xffff_ffff;
        let _ = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                Some(if packed >> 32 == minute {
                    packed + 1
                } else {
                    minute << 32 | 1
                })
            });
    }

    fn status(&self, clock: LimiterClock) -> RateLimitStatus {
        let now = clock.elapsed();
        let minute = clock.minute_of(now) & 0xffff_ffff;
        let packed = self.counter.load(Ordering::Relaxed);
        let used = if packed >> 32 == minute {
            (packed & 0xffff_ffff) as u32
        } else {
            0
        };
        RateLimitStatus {
            limit: self.per_minute.get(),
            remaining: self.per_minute.get().saturating_sub(used),
            reset: clock.until_next_minute(now),
        }
    }
}

/// A client's quota: a burst of about a twentieth of its limit, paced so that no 60-second
/// window holds more than `per_minute`.
fn window_quota(per_minute: NonZeroU32) -> Quota {
    let limit = per_minute.get();
    let burst = 1 + limit / 20;
    let pace = limit - burst + 1;
    let quota = Quota::with_period(Duration::from_secs(60) / pace)
        .unwrap_or_else(|| Quota::per_minute(per_minute));
    match NonZeroU32::new(burst) {
        Some(burst) => quota.allow_burst(burst),
        None => quota,
    }
}

/// Hands free upstream slots to waiting requests, one client after another.
async fn dispatch(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let next_try = {
            let mut state = lock(&inner.state);
            let State { budget, queue, .. } = &mut *state;
            loop {
                if !queue.has_live_waiter() {
                    break None;
                }
                match budget.try_take() {
                    Ok(ticket) => {
                        if let Some(unsent) = queue.grant(ticket) {
                            budget.give_back(unsent);
                        }
                    }
                    Err(wait) => break Some(wait),
                }
            }
        };
        let clock = inner.clock;
        let notified = wake.notified();
        // Hold no strong reference while asleep, so a dropped limiter ends this task.
        drop(inner);
        match next_try {
            None => notified.await,
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(clock.instant_at(clock.elapsed() + wait)) => {}
                    _ = notified => {}
                }
            }
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (no invariant spans an
/// unlock), so a poisoned lock is simply taken.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
