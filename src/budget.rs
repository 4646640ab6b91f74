//! Per-client credit budgets (SPEC §7): `credit_budget` credits per UTC day or month. Once a
//! client's period is spent it gets 402 until the period turns.
//!
//! A call's cost is known only from its answer, so before it is forwarded it reserves an
//! estimate, and settles to the real cost when the answer's `_meta` says it. A reservation
//! dropped unsettled (refused by the rate limiter, upstream unreachable, client gone) is
//! released, so every path gives it back.
//!
//! **The estimate** is the highest cost among the last [`ESTIMATE_WINDOW`] answers on the call's
//! route template, at least 1. The cost of one route varies from call to call (1 to 3 credits
//! on some), so the last cost seen is often the lowest: reserving it lets a burst of calls go
//! out that together cost well over what is left. The window counts answers, not time: a route
//! that has been quiet for an hour still reserves what it cost, so the burst that follows is not
//! under-reserved; a route whose price falls forgets the old price after [`ESTIMATE_WINDOW`]
//! answers; and memory stays bounded (the router caps route templates). A route with no answer
//! yet (a new route, or any route after a restart) has no estimate: it reserves 1, and its
//! client's calls on it go one at a time until an answer says what it costs, so a burst on it
//! cannot all go out under-reserved.
//!
//! **Admission** keeps `spent + reserved <= budget` for each client:
//! - the estimate fits beside what the client's calls in flight hold: admitted at once;
//! - it fits only alone (`spent + estimate <= budget`): what is left is held by calls in flight,
//!   so the call waits for one of them to settle and checks again. Near the end of a budget
//!   (less than two estimates left) calls then go one at a time. The wait is bounded by
//!   `rate_limit.max_wait`, the longest a client already waits for a rate-limit slot; the call
//!   is then refused with 429 and `Retry-After`, not 402: credits may well be left once the
//!   calls in flight have answered, and clients retry a 429 but not a 402;
//! - it does not fit even alone: 402 at once. Spend only grows within a period, so waiting
//!   cannot help.
//!
//! **Worst case.** Every admission leaves `spent + reserved <= budget`, and settling a call
//! changes `spent + reserved` by its real cost minus its reservation. So the budget is overshot
//! only by calls that cost more than their estimate, and by at most what the calls in flight
//! when the last one was admitted cost above their estimates, together. While costs stay within
//! what each route's window has seen, that is nothing, however many calls race. A route's first
//! calls go one at a time, so there it is at most one call's cost above 1. A route whose cost
//! rises above everything in its window can be over by the excess of each of its calls then in
//! flight.
//!
//! The waiting holds no lock across an await: it waits on the client's [`Notify`], which every
//! release (and every reload) signals, and checks again under the lock. A waiting call holds
//! nothing, so cancelling it (the client hangs up, `request_timeout`) leaks nothing.
//!
//! Counters add with saturation: no figure can wrap a spent budget back to a small one.
//!
//! What a client already spent in its period is read from the ledger at start and on reload. A
//! client whose spend cannot be read is not started at 0 (that would hand a spent budget out
//! again): it is *unread*, refused until [`restore_until_read`] reads the ledger again, while
//! clients without a budget are served as usual.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::calendar::{self, now_ms, DAY_MS};
use crate::config::{BudgetPeriod, Client, ClientId, Config};

/// How many of a route's latest answers its estimate looks back over.
pub const ESTIMATE_WINDOW: usize = 64;

/// What a route never answered yet reserves while its first call is out.
const UNKNOWN_ROUTE_ESTIMATE: u64 = 1;

/// How long a call that waited in vain for its client's calls in flight is told to wait before
/// retrying: those are upstream calls, which mostly answer within a second.
const HELD_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A cheap handle on every client's budget.
#[derive(Clone, Default)]
pub struct Budgets {
    inner: Arc<Mutex<Inner>>,
    unread: Arc<UnreadSignal>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<ClientId, ClientBudget>,
    /// The latest costs per route template: what the next call on it is expected to cost.
    costs: HashMap<Arc<str>, RecentCosts>,
    /// `rate_limit.max_wait`: how long a call may wait for its client's calls in flight.
    max_wait: Duration,
    /// Budgeted clients whose spend in their current period could not be read from the ledger.
    unread: HashSet<ClientId>,
    /// Why the last read failed, while `unread` is not empty.
    unread_reason: Option<String>,
}

/// Lets the request path skip the lock while every budget is read, and wakes the task that
/// retries the ledger when a budget becomes unread.
#[derive(Default)]
struct UnreadSignal {
    /// Mirrors `!Inner::unread.is_empty()`; written under the lock.
    any: AtomicBool,
    became_unread: Notify,
}

/// Credits spent per client name since a moment, as read from the ledger; `Err` says why it
/// could not be read.
pub type PastSpend = Result<HashMap<String, u64>, String>;

struct ClientBudget {
    limit: u64,
    period: BudgetPeriod,
    /// Start (ms since the epoch) of the period the counters belong to.
    period_start: i64,
    spent: u64,
    /// Credits held by calls in flight.
    reserved: u64,
    /// Routes with no known cost on which one of this client's calls is out.
    probing: HashSet<Arc<str>>,
    /// Signalled whenever one of this client's reservations is settled or released, for the
    /// calls waiting for room. Kept across reloads, so a waiter is never left on a stale one.
    released: Arc<Notify>,
}

/// The costs of a route's latest answers, at most [`ESTIMATE_WINDOW`].
#[derive(Default)]
struct RecentCosts {
    costs: VecDeque<u64>,
    /// The highest of `costs`.
    highest: u64,
}

impl RecentCosts {
    fn record(&mut self, cost: u64) {
        if self.costs.len() == ESTIMATE_WINDOW {
            self.costs.pop_front();
        }
        self.costs.push_back(cost);
        self.highest = self.costs.iter().copied().max().unwrap_or(0);
    }
}

/// Why a call was refused with 402: its client's period cannot cover it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub spent: u64,
    pub budget: u64,
    /// What the call was expected to cost.
    pub estimate: u64,
    /// When the period turns (ms since the epoch).
    pub resets_at_ms: i64,
    pub period: BudgetPeriod,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let period = match self.period {
            BudgetPeriod::Day => "today",
            BudgetPeriod::Month => "this month",
        };
        write!(
            f,
            "{} of {} credits spent {period}, and a call on this route may cost {}; the budget resets at {}",
            self.spent,
            self.budget,
            self.estimate,
            calendar::format_utc(self.resets_at_ms)
        )
    }
}

/// Why a call is not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The period cannot cover the call's estimate: 402 until it turns.
    Exhausted(Exhausted),
    /// The budget could cover the call, but what is left is held by the client's calls in
    /// flight: it may be admitted once they settle (429, retry after this long).
    Held { retry_after: Duration },
}

/// Credits held for one call in flight. Settle it with the call's real cost; dropped unsettled,
/// it is released.
pub struct Reservation {
    budgets: Budgets,
    client: ClientId,
    route: Arc<str>,
    amount: u64,
    /// The first call out on a route with no known cost.
    probe: bool,
    period_start: i64,
    settled: Mutex<bool>,
}

impl Budgets {
    /// Budgets for the configured clients, with what each already spent in its current period
    /// (from the ledger: `spent_in_period(start)` gives credits per client since `start`).
    pub fn new(config: &Config, spent_since: impl Fn(i64) -> HashMap<String, u64>) -> Self {
        Self::reading(config, |since| Ok(spent_since(since)))
    }

    /// [`Budgets::new`] from a ledger read that may fail: the budgeted clients whose spend
    /// cannot be read are unread (refused) until [`Budgets::restore`] succeeds.
    pub fn reading(config: &Config, spent_since: impl Fn(i64) -> PastSpend) -> Self {
        let budgets = Self::default();
        budgets.reconfigure_reading(config, now_ms(), spent_since);
        budgets
    }

    /// Applies reloaded budgets; clients whose period is unchanged keep their counters.
    pub fn reconfigure(
        &self,
        config: &Config,
        now_ms: i64,
        spent_since: impl Fn(i64) -> HashMap<String, u64>,
    ) {
        self.reconfigure_reading(config, now_ms, |since| Ok(spent_since(since)));
    }

    /// [`Budgets::reconfigure`] from a ledger read that may fail (see [`Budgets::reading`]).
    pub fn reconfigure_reading(
        &self,
        config: &Config,
        now_ms: i64,
        spent_since: impl Fn(i64) -> PastSpend,
    ) {
        let mut restored: HashMap<i64, PastSpend> = HashMap::new();
        let mut inner = lock(&self.inner);
        inner.max_wait = config.rate_limit.max_wait;
        let mut clients = HashMap::new();
        let mut unread = HashSet::new();
        let mut failure = None;
        for client in &config.clients.clients {
            let Some(limit) = client.credit_budget else {
                continue;
            };
            let period_start = period_start(client.budget_period, now_ms);
            let old = inner.clients.remove(&client.id);
            let released = old
                .as_ref()
                .map_or_else(Arc::default, |old| Arc::clone(&old.released));
            let (spent, reserved, probing) = match old {
                Some(old)
                    if old.period == client.budget_period && old.period_start == period_start =>
                {
                    if inner.unread.contains(&client.id) {
                        unread.insert(client.id.clone());
                    }
                    (old.spent, old.reserved, old.probing)
                }
                _ => match restored
                    .entry(period_start)
                    .or_insert_with(|| spent_since(period_start))
                {
                    Ok(spent) => (
                        spent.get(client.id.as_str()).copied().unwrap_or(0),
                        0,
                        HashSet::new(),
                    ),
                    Err(reason) => {
                        unread.insert(client.id.clone());
                        failure = Some(reason.clone());
                        (0, 0, HashSet::new())
                    }
                },
            };
            clients.insert(
                client.id.clone(),
                ClientBudget {
                    limit,
                    period: client.budget_period,
                    period_start,
                    spent,
                    reserved,
                    probing,
                    released,
                },
            );
        }
        // Waiting calls check again: a budget may have grown, or gone (then they wait no more).
        let waiters: Vec<Arc<Notify>> = inner
            .clients
            .values()
            .chain(clients.values())
            .map(|budget| Arc::clone(&budget.released))
            .collect();
        inner.clients = clients;
        if let Some(reason) = &failure {
            tracing::error!(
                clients = unread.len(),
                error = %reason,
                "could not read this period's spend of budgeted clients from the ledger; they are \
                 refused (503) until it can be read, and it is read again in the background"
            );
        }
        let reason = failure.or_else(|| inner.unread_reason.take());
        self.set_unread(&mut inner, unread, reason);
        drop(inner);
        for released in waiters {
            released.notify_waiters();
        }
    }

    /// Reads the spend of the unread clients from the ledger again. `Ok` once no client is
    /// unread; otherwise why the read failed. The ledger is read without holding the lock.
    pub fn restore(
        &self,
        now_ms: i64,
        spent_since: impl Fn(i64) -> PastSpend,
    ) -> Result<(), String> {
        let wanted: Vec<(ClientId, i64)> = {
            let mut inner = lock(&self.inner);
            let Inner {
                clients, unread, ..
            } = &mut *inner;
            unread
                .iter()
                .filter_map(|id| {
                    let budget = clients.get_mut(id)?;
                    budget.roll(now_ms);
                    Some((id.clone(), budget.period_start))
                })
                .collect()
        };
        let mut reads: HashMap<i64, PastSpend> = HashMap::new();
        for (_, start) in &wanted {
            reads.entry(*start).or_insert_with(|| spent_since(*start));
        }
        let mut inner = lock(&self.inner);
        let mut unread = std::mem::take(&mut inner.unread);
        let mut failure = None;
        for (id, start) in wanted {
            match reads.get(&start) {
                Some(Ok(spent)) => {
                    let Some(budget) = inner.clients.get_mut(&id) else {
                        continue;
                    };
                    if budget.period_start != start {
                        // The period turned meanwhile: the next attempt reads the new one.
                        continue;
                    }
                    // The ledger holds every committed call; a charge this process made for
                    // the client meanwhile (a call in flight across a reload) may be in it.
                    let read = spent.get(id.as_str()).copied().unwrap_or(0);
                    budget.spent = budget.spent.max(read);
                    unread.remove(&id);
                }
                Some(Err(reason)) => failure = Some(reason.clone()),
                None => {}
            }
        }
        // A client no longer configured is no longer unread.
        let Inner { clients, .. } = &*inner;
        unread.retain(|id| clients.contains_key(id));
        let reason = failure
            .or_else(|| inner.unread_reason.take())
            .unwrap_or_else(|| "the ledger could not be read".into());
        let result = if unread.is_empty() {
            Ok(())
        } else {
            Err(reason.clone())
        };
        self.set_unread(&mut inner, unread, Some(reason));
        result
    }

    fn set_unread(&self, inner: &mut Inner, unread: HashSet<ClientId>, reason: Option<String>) {
        let any = !unread.is_empty();
        inner.unread = unread;
        inner.unread_reason = reason.filter(|_| any);
        if any && !self.unread.any.swap(true, Ordering::SeqCst) {
            self.unread.became_unread.notify_one();
        }
        self.unread.any.store(any, Ordering::SeqCst);
    }

    /// Whether `client`'s spend in its period is unknown because the ledger could not be read:
    /// its calls are refused, not let through as if nothing were spent.
    pub fn is_unread(&self, client: &ClientId) -> bool {
        self.unread.any.load(Ordering::Relaxed) && lock(&self.inner).unread.contains(client)
    }

    /// Why some budgets are unread (for `/readyz`); `None` when every budget is known.
    pub fn unread_reason(&self) -> Option<String> {
        if !self.unread.any.load(Ordering::Relaxed) {
            return None;
        }
        let inner = lock(&self.inner);
        (!inner.unread.is_empty()).then(|| {
            inner
                .unread_reason
                .clone()
                .unwrap_or_else(|| "the ledger could not be read".into())
        })
    }

    /// Reserves the estimated cost of a call on `route` if it can be admitted now; `Ok(None)`
    /// for a client without budget.
    pub fn reserve(
        &self,
        client: &Client,
        route: &Arc<str>,
    ) -> Result<Option<Reservation>, Refusal> {
        self.admit_at(client, route, now_ms())
    }

    /// [`Self::reserve`], waiting up to `rate_limit.max_wait` for the client's calls in flight
    /// to make room when they hold what is left. Cancel-safe: nothing is held until it returns.
    pub async fn reserve_waiting(
        &self,
        client: &Client,
        route: &Arc<str>,
    ) -> Result<Option<Reservation>, Refusal> {
        let max_wait = lock(&self.inner).max_wait;
        self.reserve_within(client, route, max_wait).await
    }

    async fn reserve_within(
        &self,
        client: &Client,
        route: &Arc<str>,
        wait: Duration,
    ) -> Result<Option<Reservation>, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(signal) = self.released_signal(&client.id) else {
                return Ok(None);
            };
            let released = signal.notified();
            tokio::pin!(released);
            // Registered before checking, so a release between the check and the wait is seen.
            released.as_mut().enable();
            match self.reserve(client, route) {
                Err(Refusal::Held { .. }) => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.reserve(client, route);
            }
        }
    }

    fn released_signal(&self, client: &ClientId) -> Option<Arc<Notify>> {
        let inner = lock(&self.inner);
        inner
            .clients
            .get(client)
            .map(|budget| Arc::clone(&budget.released))
    }

    fn admit_at(
        &self,
        client: &Client,
        route: &Arc<str>,
        now_ms: i64,
    ) -> Result<Option<Reservation>, Refusal> {
        let mut inner = lock(&self.inner);
        let known = inner.costs.get(route).map(|costs| costs.highest.max(1));
        let Some(budget) = inner.clients.get_mut(&client.id) else {
            return Ok(None);
        };
        budget.roll(now_ms);
        let amount = known.unwrap_or(UNKNOWN_ROUTE_ESTIMATE);
        if budget.spent.saturating_add(amount) > budget.limit {
            return Err(Refusal::Exhausted(Exhausted {
                spent: budget.spent,
                budget: budget.limit,
                estimate: amount,
                resets_at_ms: period_end(budget.period, budget.period_start),
                period: budget.period,
            }));
        }
        let probe = known.is_none();
        if budget
            .spent
            .saturating_add(budget.reserved)
            .saturating_add(amount)
            > budget.limit
            || (probe && budget.probing.contains(route))
        {
            return Err(Refusal::Held {
                retry_after: HELD_RETRY_AFTER,
            });
        }
        budget.reserved = budget.reserved.saturating_add(amount);
        if probe {
            budget.probing.insert(Arc::clone(route));
        }
        Ok(Some(Reservation {
            budgets: self.clone(),
            client: client.id.clone(),
            route: Arc::clone(route),
            amount,
            probe,
            period_start: budget.period_start,
            settled: Mutex::new(false),
        }))
    }

    /// `(spent, remaining)` in the client's current period, if it has a budget.
    pub fn status(&self, client: &ClientId) -> Option<(u64, u64)> {
        let mut inner = lock(&self.inner);
        let budget = inner.clients.get_mut(client)?;
        budget.roll(now_ms());
        Some((budget.spent, budget.limit.saturating_sub(budget.spent)))
    }

    fn release(&self, reservation: &Reservation, cost: Option<u64>) {
        let mut inner = lock(&self.inner);
        if let Some(cost) = cost {
            inner
                .costs
                .entry(Arc::clone(&reservation.route))
                .or_default()
                .record(cost);
        }
        let Some(budget) = inner.clients.get_mut(&reservation.client) else {
            return;
        };
        if budget.period_start == reservation.period_start {
            budget.reserved = budget.reserved.saturating_sub(reservation.amount);
            if reservation.probe {
                budget.probing.remove(&reservation.route);
            }
            budget.spent = budget.spent.saturating_add(cost.unwrap_or(0));
        } else if let Some(cost) = cost {
            // The period turned while the call was in flight: charge the new one.
            budget.roll(now_ms());
            budget.spent = budget.spent.saturating_add(cost);
        }
        let released = Arc::clone(&budget.released);
        drop(inner);
        released.notify_waiters();
    }
}

impl ClientBudget {
    fn roll(&mut self, now_ms: i64) {
        let start = period_start(self.period, now_ms);
        if start != self.period_start {
            self.period_start = start;
            self.spent = 0;
            self.reserved = 0;
            self.probing.clear();
        }
    }
}

impl Reservation {
    /// The call's real cost is known: charge it instead of the reservation.
    pub fn settle(&self, cost: u64) {
        let mut settled = lock(&self.settled);
        if !*settled {
            *settled = true;
            self.budgets.release(self, Some(cost));
        }
    }

    /// What was reserved (the charge when the real cost never became known).
    pub fn amount(&self) -> u64 {
        self.amount
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let settled = *lock(&self.settled);
        if !settled {
            self.budgets.release(self, None);
        }
    }
}

fn period_start(period: BudgetPeriod, now_ms: i64) -> i64 {
    match period {
        BudgetPeriod::Day => calendar::day_start_ms(now_ms),
        BudgetPeriod::Month => calendar::month_start_ms(now_ms),
    }
}

fn period_end(period: BudgetPeriod, start: i64) -> i64 {
    match period {
        BudgetPeriod::Day => start + DAY_MS,
        BudgetPeriod::Month => calendar::next_month_start_ms(start),
    }
}

/// The first wait before reading the ledger again for unread budgets; it doubles per failure...
const RESTORE_FIRST_RETRY: Duration = Duration::from_millis(500);
/// ...up to this.
const RESTORE_MAX_RETRY: Duration = Duration::from_secs(30);

/// Runs until `stop` turns true: whenever some budgets are unread, reads the ledger again
/// (`spent_since`, a blocking read, run off the runtime's threads) with a backoff from 0.5 s
/// doubling to 30 s, until every budget is restored; then waits for a budget to become unread
/// again (a reload whose read failed).
pub async fn restore_until_read<F>(
    budgets: Budgets,
    spent_since: F,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn(i64) -> PastSpend + Clone + Send + 'static,
{
    let restoring = async {
        loop {
            if budgets.unread_reason().is_none() {
                // A notification given since the check above is kept for this wait.
                budgets.unread.became_unread.notified().await;
                continue;
            }
            let mut wait = RESTORE_FIRST_RETRY;
            loop {
                tokio::time::sleep(wait).await;
                let (handle, read) = (budgets.clone(), spent_since.clone());
                let attempt =
                    tokio::task::spawn_blocking(move || handle.restore(now_ms(), read)).await;
                match attempt {
                    Ok(Ok(())) => {
                        tracing::info!(
                            "budgets restored from the ledger; budgeted clients are served again"
                        );
                        break;
                    }
                    Ok(Err(reason)) => {
                        tracing::debug!(%reason, "the ledger still cannot be read for budgets");
                    }
                    Err(error) => tracing::error!(%error, "reading budgets from the ledger failed"),
                }
                wait = (wait * 2).min(RESTORE_MAX_RETRY);
            }
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => {}
        () = restoring => {}
    }
}

/// The counters stay consistent even if a holder panicked, so a poisoned lock is simply taken.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(budget: u64, period: &str) -> Config {
        let text = format!(
            "[upstream]\napi_key_env = \"K\"\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\ncredit_budget = {budget}\nbudget_period = \"{period}\"\n[[clients]]\nname = \"free\"\nkey_sha256 = \"{}\"\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        crate::config::parse_str(Path::new("t.toml"), &text, &|_| Some("k".into())).unwrap()
    }

    fn route() -> Arc<str> {
        Arc::from("PUT /api/fansly/{account}/tracking-links/{id}")
    }

    /// Calls on `route()` answered one after the other at `costs`, so that the route is known.
    fn answered(budgets: &Budgets, client: &Client, costs: &[u64]) {
        for &cost in costs {
            let call = budgets.reserve(client, &route()).ok().flatten().unwrap();
            call.settle(cost);
        }
    }

    fn is_held(result: &Result<Option<Reservation>, Refusal>) -> bool {
        matches!(result, Err(Refusal::Held { .. }))
    }

    #[test]
    fn reservations_cannot_overshoot_the_budget() {
        let config = config(10, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        answered(&budgets, client, &[1]);
        let held: Vec<_> = (0..50)
            .filter_map(|_| budgets.reserve(client, &route()).ok().flatten())
            .collect();
        assert_eq!(held.len(), 9);
        for reservation in &held {
            reservation.settle(1);
        }
        drop(held);
        assert_eq!(budgets.status(&client.id), Some((10, 0)));
        let Err(Refusal::Exhausted(refused)) = budgets.reserve(client, &route()) else {
            panic!("a spent budget refuses with 402");
        };
        assert_eq!((refused.spent, refused.budget), (10, 10));
    }

    #[test]
    fn unsettled_reservations_are_released() {
        let config = config(2, "day");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        for _ in 0..10 {
            let reservation = budgets.reserve(client, &route()).unwrap();
            drop(reservation);
        }
        assert_eq!(budgets.status(&client.id), Some((0, 2)));
    }

    /// The report: a route that cost 1, 3, 2, 1, then 32 calls racing for a budget of 40, each
    /// admitted one held in flight until they all answer, at costs between 1 and 3.
    #[test]
    fn varying_costs_cannot_overshoot_the_budget_however_many_calls_race() {
        let config = config(40, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        answered(&budgets, client, &[1, 3, 2, 1]);
        let mut charged = 7;
        let mut costs = [3, 2, 1].into_iter().cycle();
        let mut admitted = 0;
        loop {
            let held: Vec<_> = (0..32)
                .filter_map(|_| budgets.reserve(client, &route()).ok().flatten())
                .collect();
            if held.is_empty() {
                break;
            }
            for call in held {
                let cost = costs.next().unwrap_or(3);
                call.settle(cost);
                charged += cost;
                admitted += 1;
            }
        }
        assert!(charged <= 40, "{admitted} calls admitted charged {charged}");
        assert_eq!(budgets.status(&client.id), Some((charged, 40 - charged)));
    }

    #[test]
    fn the_estimate_is_the_highest_cost_among_the_routes_latest_answers() {
        let config = config(1_000_000, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        let estimate = || {
            budgets
                .reserve(client, &route())
                .ok()
                .flatten()
                .unwrap()
                .amount()
        };
        answered(&budgets, client, &[1, 3, 2, 1]);
        assert_eq!(estimate(), 3);
        answered(&budgets, client, &[1; ESTIMATE_WINDOW - 3]);
        assert_eq!(estimate(), 3, "the 3 is still among the latest answers");
        answered(&budgets, client, &[1]);
        assert_eq!(estimate(), 2, "the 3 has left the window");
        answered(&budgets, client, &[0; ESTIMATE_WINDOW]);
        assert_eq!(
            estimate(),
            1,
            "at least 1, even on a route that costs nothing"
        );
        answered(&budgets, client, &[40]);
        assert_eq!(estimate(), 40);
        let other = budgets
            .reserve(client, &Arc::from("GET /api/whoami"))
            .unwrap()
            .unwrap();
        assert_eq!(other.amount(), 1, "costs are learned per route");
    }

    /// After a restart or on a new route nothing says what a call costs: it reserves 1, and a
    /// burst goes out one call at a time until the first answer says.
    #[test]
    fn calls_on_a_route_never_answered_go_one_at_a_time_until_its_cost_is_known() {
        let config = config(10, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        let burst = || -> Vec<Reservation> {
            (0..10)
                .filter_map(|_| budgets.reserve(client, &route()).ok().flatten())
                .collect()
        };
        let first = burst();
        assert_eq!(first.len(), 1, "one call finds out what the route costs");
        assert_eq!(first[0].amount(), 1);
        assert!(is_held(&budgets.reserve(client, &route())));
        let other_route = Arc::from("GET /api/whoami");
        let other = budgets.reserve(client, &other_route).unwrap().unwrap();
        drop(first);
        let after_a_failure = burst();
        assert_eq!(after_a_failure.len(), 1, "a failed call taught nothing");
        after_a_failure[0].settle(3);
        drop(after_a_failure);
        // 3 spent, 1 held by the other route's call: two calls at 3 fit beside it.
        assert_eq!(burst().len(), 2);
        drop(other);
    }

    #[test]
    fn a_call_the_budget_cannot_cover_even_alone_is_refused_at_once() {
        let config = config(5, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        answered(&budgets, client, &[3]);
        let Err(Refusal::Exhausted(refused)) = budgets.reserve(client, &route()) else {
            panic!("3 spent of 5 cannot cover a call estimated at 3");
        };
        assert_eq!((refused.spent, refused.estimate), (3, 3));
        assert!(refused.to_string().contains("may cost 3"), "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_is_admitted_when_the_calls_in_flight_settle_or_refused_after_the_wait() {
        let config = config(9, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = Arc::clone(&config.clients.clients[0]);
        answered(&budgets, &client, &[3]);
        let a = budgets.reserve(&client, &route()).unwrap().unwrap();
        let b = budgets.reserve(&client, &route()).unwrap().unwrap();
        assert!(is_held(&budgets.reserve(&client, &route())));

        let waiting = {
            let (budgets, client) = (budgets.clone(), Arc::clone(&client));
            tokio::spawn(async move {
                budgets
                    .reserve_within(&client, &route(), Duration::from_secs(5))
                    .await
            })
        };
        tokio::task::yield_now().await;
        a.settle(1);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "4 spent + 3 held + 3 > 9: still waiting"
        );
        b.settle(2);
        let c = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(c.amount(), 3);
        assert_eq!(budgets.status(&client.id), Some((6, 3)));

        let started = tokio::time::Instant::now();
        let refused = budgets
            .reserve_within(&client, &route(), Duration::from_secs(2))
            .await;
        assert!(is_held(&refused), "still held after the wait");
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // A waiter cancelled (its client hung up) holds nothing.
        let template = route();
        let cancelled = budgets.reserve_within(&client, &template, Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_secs(1), cancelled)
            .await
            .is_err());
        drop(c);
        assert_eq!(budgets.status(&client.id), Some((6, 3)));
        assert_eq!(
            budgets
                .reserve(&client, &route())
                .unwrap()
                .unwrap()
                .amount(),
            3,
            "the released reservation and the cancelled waiter leave room for one more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_checks_again_when_the_budgets_are_reloaded() {
        let config = config(6, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = Arc::clone(&config.clients.clients[0]);
        answered(&budgets, &client, &[3]);
        let _in_flight = budgets.reserve(&client, &route()).unwrap().unwrap();
        let wait = |budgets: &Budgets| {
            let (budgets, client) = (budgets.clone(), Arc::clone(&client));
            tokio::spawn(async move {
                budgets
                    .reserve_within(&client, &route(), Duration::from_secs(60))
                    .await
            })
        };
        let started = tokio::time::Instant::now();
        let waiting = wait(&budgets);
        tokio::task::yield_now().await;
        budgets.reconfigure(&self::config(9, "month"), now_ms(), |_| HashMap::new());
        let admitted = waiting.await.unwrap().ok().flatten();
        assert_eq!(
            admitted.as_ref().map(Reservation::amount),
            Some(3),
            "9 covers 3 + 3 + 3"
        );

        let waiting = wait(&budgets);
        tokio::task::yield_now().await;
        let mut without = self::config(9, "month");
        without.clients = crate::config::ClientRegistry::new(Vec::new());
        budgets.reconfigure(&without, now_ms(), |_| HashMap::new());
        let unbudgeted = waiting.await.unwrap();
        assert!(matches!(unbudgeted, Ok(None)), "no budget any more");
        assert_eq!(started.elapsed(), Duration::ZERO, "woken by the reloads");
    }

    #[test]
    fn spend_is_restored_from_the_ledger_and_the_period_turns() {
        let config = config(10, "day");
        let budgets = Budgets::new(&config, |_| HashMap::from([("a".to_string(), 9)]));
        let client = &config.clients.clients[0];
        assert_eq!(budgets.status(&client.id), Some((9, 1)));
        let tomorrow = now_ms() + DAY_MS;
        let _held = budgets.admit_at(client, &route(), now_ms()).ok().unwrap();
        assert!(budgets.admit_at(client, &route(), now_ms()).is_err());
        assert!(
            budgets.admit_at(client, &route(), tomorrow).is_ok(),
            "a new day, a new budget"
        );
    }

    #[test]
    fn clients_without_a_budget_reserve_nothing() {
        let config = config(1, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        assert!(budgets
            .reserve(&config.clients.clients[1], &route())
            .unwrap()
            .is_none());
    }

    #[test]
    fn spend_and_reservations_add_with_saturation_and_a_spent_budget_stays_spent() {
        let config = config(10, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        let first = budgets.reserve(client, &route()).unwrap().unwrap();
        first.settle(5);
        let second = budgets.reserve(client, &route()).unwrap().unwrap();
        second.settle(u64::MAX);
        assert_eq!(budgets.status(&client.id), Some((u64::MAX, 0)));
        // The next call is expected to cost u64::MAX as well: refused, not wrapped into room.
        let refused = budgets.reserve(client, &route()).err().unwrap();
        assert!(
            matches!(&refused, Refusal::Exhausted(e) if e.spent == u64::MAX),
            "{refused:?}"
        );
        assert!(budgets
            .reserve(client, &Arc::from("GET /api/whoami"))
            .is_err());
    }

    #[test]
    fn a_budget_whose_spend_cannot_be_read_is_refused_until_the_ledger_is_read() {
        let config = config(10, "month");
        let budgets = Budgets::reading(&config, |_| Err("disk I/O error".into()));
        let (budgeted, free) = (&config.clients.clients[0], &config.clients.clients[1]);
        assert!(budgets.is_unread(&budgeted.id));
        assert!(!budgets.is_unread(&free.id), "no budget, nothing to read");
        assert_eq!(budgets.unread_reason().as_deref(), Some("disk I/O error"));

        let still = budgets.restore(now_ms(), |_| Err("database is locked".into()));
        assert_eq!(still, Err("database is locked".into()));
        assert!(budgets.is_unread(&budgeted.id));
        assert_eq!(
            budgets.unread_reason().as_deref(),
            Some("database is locked")
        );

        let read = budgets.restore(now_ms(), |_| Ok(HashMap::from([("a".to_string(), 10)])));
        assert_eq!(read, Ok(()));
        assert!(!budgets.is_unread(&budgeted.id));
        assert_eq!(budgets.unread_reason(), None);
        assert_eq!(budgets.status(&budgeted.id), Some((10, 0)));
        assert!(budgets.reserve(budgeted, &route()).is_err(), "spent: 402");
    }

    #[test]
    fn a_reload_whose_read_fails_makes_only_the_budgets_it_had_to_read_unread() {
        let monthly = config(10, "month");
        let budgets = Budgets::new(&monthly, |_| HashMap::from([("a".to_string(), 3)]));
        let client = &monthly.clients.clients[0];
        // Same period: the counters are kept, nothing is read.
        budgets.reconfigure_reading(&monthly, now_ms(), |_| Err("unreadable".into()));
        assert!(!budgets.is_unread(&client.id));
        assert_eq!(budgets.status(&client.id), Some((3, 7)));
        // A new period (a daily budget now) must be read: it cannot be, so it is unread.
        let daily = config(10, "day");
        budgets.reconfigure_reading(&daily, now_ms(), |_| Err("unreadable".into()));
        assert!(budgets.is_unread(&client.id));
        assert_eq!(budgets.unread_reason().as_deref(), Some("unreadable"));
    }

    #[tokio::test(start_paused = true)]
    async fn unread_budgets_are_read_again_with_a_bounded_backoff_until_the_ledger_answers() {
        use std::sync::atomic::AtomicUsize;

        let config = config(10, "month");
        let budgets = Budgets::reading(&config, |_| Err("unreadable".into()));
        let client = config.clients.clients[0].id.clone();
        let attempts = Arc::new(AtomicUsize::new(0));
        let read = {
            let attempts = Arc::clone(&attempts);
            move |_since: i64| -> PastSpend {
                if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("still unreadable".into())
                } else {
                    Ok(HashMap::from([("a".to_string(), 4)]))
                }
            }
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(restore_until_read(budgets.clone(), read, stopped));
        let started = tokio::time::Instant::now();
        while budgets.is_unread(&client) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never restored"
            );
        }
        // Waits of 0.5 s, 1 s and 2 s before the three attempts.
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(3_500) && took < Duration::from_millis(3_600),
            "{took:?}"
        );
        assert_eq!(budgets.status(&client), Some((4, 6)));
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
