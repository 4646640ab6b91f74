//! Per-client credit budgets (SPEC §7): `credit_budget` credits per UTC day or month. Once a
//! client's period is spent it gets 402 until the period turns.
//!
//! Concurrency must not overshoot: before a call is forwarded, its expected cost (the last cost
//! seen on its route, at least 1) is reserved; when the answer's `_meta` says what it really
//! cost, the reservation settles to that. A reservation dropped unsettled (refused by the rate
//! limiter, upstream unreachable, client gone) is released, so every path gives it back.
//! Counters add with saturation: no figure can wrap a spent budget back to a small one.
//!
//! What a client already spent in its period is read from the ledger at start and on reload. A
//! client whose spend cannot be read is not started at 0 (that would hand a spent budget out
//! again): it is *unread*, refused until [`restore_until_read`] reads the ledger again, while
//! clients without a budget are served as usual.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::calendar::{self, now_ms, DAY_MS};
use crate::config::{BudgetPeriod, Client, ClientId, Config};

/// A cheap handle on every client's budget.
#[derive(Clone, Default)]
pub struct Budgets {
    inner: Arc<Mutex<Inner>>,
    unread: Arc<UnreadSignal>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<ClientId, ClientBudget>,
    /// The last cost seen per route template: what the next call on it is expected to cost.
    expected: HashMap<Arc<str>, u64>,
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
}

/// Why a call was refused: its client's period is spent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub spent: u64,
    pub budget: u64,
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
            "{} of {} credits spent {period}; the budget resets at {}",
            self.spent,
            self.budget,
            calendar::format_utc(self.resets_at_ms)
        )
    }
}

/// Credits held for one call in flight. Settle it with the call's real cost; dropped unsettled,
/// it is released.
pub struct Reservation {
    budgets: Budgets,
    client: ClientId,
    route: Arc<str>,
    amount: u64,
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
        let mut clients = HashMap::new();
        let mut unread = HashSet::new();
        let mut failure = None;
        for client in &config.clients.clients {
            let Some(limit) = client.credit_budget else {
                continue;
            };
            let period_start = period_start(client.budget_period, now_ms);
            let (spent, reserved) = match inner.clients.remove(&client.id) {
                Some(old)
                    if old.period == client.budget_period && old.period_start == period_start =>
                {
                    if inner.unread.contains(&client.id) {
                        unread.insert(client.id.clone());
                    }
                    (old.spent, old.reserved)
                }
                _ => match restored
                    .entry(period_start)
                    .or_insert_with(|| spent_since(period_start))
                {
                    Ok(spent) => (spent.get(client.id.as_str()).copied().unwrap_or(0), 0),
                    Err(reason) => {
                        unread.insert(client.id.clone());
                        failure = Some(reason.clone());
                        (0, 0)
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
                },
            );
        }
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

    /// Reserves the expected cost of a call on `route`; `Ok(None)` for a client without budget.
    pub fn reserve(
        &self,
        client: &Client,
        route: &Arc<str>,
    ) -> Result<Option<Reservation>, Exhausted> {
        self.reserve_at(client, route, now_ms())
    }

    fn reserve_at(
        &self,
        client: &Client,
        route: &Arc<str>,
        now_ms: i64,
    ) -> Result<Option<Reservation>, Exhausted> {
        let mut inner = lock(&self.inner);
        let amount = inner.expected.get(route).copied().unwrap_or(1).max(1);
        let Some(budget) = inner.clients.get_mut(&client.id) else {
            return Ok(None);
        };
        budget.roll(now_ms);
        if budget
            .spent
            .saturating_add(budget.reserved)
            .saturating_add(amount)
            > budget.limit
        {
            return Err(Exhausted {
                spent: budget.spent,
                budget: budget.limit,
                resets_at_ms: period_end(budget.period, budget.period_start),
                period: budget.period,
            });
        }
        budget.reserved = budget.reserved.saturating_add(amount);
        Ok(Some(Reservation {
            budgets: self.clone(),
            client: client.id.clone(),
            route: Arc::clone(route),
            amount,
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
                .expected
                .insert(Arc::clone(&reservation.route), cost.max(1));
        }
        let Some(budget) = inner.clients.get_mut(&reservation.client) else {
            return;
        };
        if budget.period_start == reservation.period_start {
            budget.reserved = budget.reserved.saturating_sub(reservation.amount);
            budget.spent = budget.spent.saturating_add(cost.unwrap_or(0));
        } else if let Some(cost) = cost {
            // The period turned while the call was in flight: charge the new one.
            budget.roll(now_ms());
            budget.spent = budget.spent.saturating_add(cost);
        }
    }
}

impl ClientBudget {
    fn roll(&mut self, now_ms: i64) {
        let start = period_start(self.period, now_ms);
        if start != self.period_start {
            self.period_start = start;
            self.spent = 0;
            self.reserved = 0;
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

    #[test]
    fn reservations_cannot_overshoot_the_budget() {
        let config = config(10, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        let held: Vec<_> = (0..50)
            .filter_map(|_| budgets.reserve(client, &route()).ok().flatten())
            .collect();
        assert_eq!(held.len(), 10);
        for reservation in &held {
            reservation.settle(1);
        }
        drop(held);
        assert_eq!(budgets.status(&client.id), Some((10, 0)));
        let refused = budgets.reserve(client, &route()).err().unwrap();
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

    #[test]
    fn the_expected_cost_is_learned_per_route() {
        let config = config(100, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        budgets
            .reserve(client, &route())
            .unwrap()
            .unwrap()
            .settle(40);
        let next = budgets.reserve(client, &route()).unwrap().unwrap();
        assert_eq!(next.amount(), 40);
        let other = budgets
            .reserve(client, &Arc::from("GET /api/whoami"))
            .unwrap()
            .unwrap();
        assert_eq!(other.amount(), 1);
        // 40 spent + 40 + 1 held: another 40 would pass 100.
        assert!(budgets.reserve(client, &route()).is_err());
    }

    #[test]
    fn spend_is_restored_from_the_ledger_and_the_period_turns() {
        let config = config(10, "day");
        let budgets = Budgets::new(&config, |_| HashMap::from([("a".to_string(), 9)]));
        let client = &config.clients.clients[0];
        assert_eq!(budgets.status(&client.id), Some((9, 1)));
        let tomorrow = now_ms() + DAY_MS;
        let _held = budgets.reserve_at(client, &route(), now_ms()).unwrap();
        assert!(budgets.reserve_at(client, &route(), now_ms()).is_err());
        assert!(
            budgets.reserve_at(client, &route(), tomorrow).is_ok(),
            "a new day, a new budget"
        );
    }

    #[test]
    fn spend_and_reservations_add_with_saturation_and_a_spent_budget_stays_spent() {
        let config = config(10, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        let client = &config.clients.clients[0];
        let first = budgets.reserve(client, &route()).unwrap().unwrap();
        let second = budgets.reserve(client, &route()).unwrap().unwrap();
        first.settle(u64::MAX);
        second.settle(5);
        assert_eq!(budgets.status(&client.id), Some((u64::MAX, 0)));
        // The next call is expected to cost u64::MAX as well: refused, not wrapped into room.
        let refused = budgets.reserve(client, &route()).err().unwrap();
        assert_eq!(refused.spent, u64::MAX);
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

    #[test]
    fn clients_without_a_budget_reserve_nothing() {
        let config = config(1, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        assert!(budgets
            .reserve(&config.clients.clients[1], &route())
            .unwrap()
            .is_none());
    }
}
