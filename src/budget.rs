//! Per-client credit budgets (SPEC §7): `credit_budget` credits per UTC day or month. Once a
//! client's period is spent it gets 402 until the period turns.
//!
//! Concurrency must not overshoot: before a call is forwarded, its expected cost (the last cost
//! seen on its route, at least 1) is reserved; when the answer's `_meta` says what it really
//! cost, the reservation settles to that. A reservation dropped unsettled (refused by the rate
//! limiter, upstream unreachable, client gone) is released, so every path gives it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::calendar::{self, now_ms, DAY_MS};
use crate::config::{BudgetPeriod, Client, ClientId, Config};

/// A cheap handle on every client's budget.
#[derive(Clone, Default)]
pub struct Budgets {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<ClientId, ClientBudget>,
    /// The last cost seen per route template: what the next call on it is expected to cost.
    expected: HashMap<Arc<str>, u64>,
}

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
        let budgets = Self::default();
        budgets.reconfigure(config, now_ms(), spent_since);
        budgets
    }

    /// Applies reloaded budgets; clients whose period is unchanged keep their counters.
    pub fn reconfigure(
        &self,
        config: &Config,
        now_ms: i64,
        spent_since: impl Fn(i64) -> HashMap<String, u64>,
    ) {
        let mut restored: HashMap<i64, HashMap<String, u64>> = HashMap::new();
        let mut inner = lock(&self.inner);
        let mut clients = HashMap::new();
        for client in &config.clients.clients {
            let Some(limit) = client.credit_budget else {
                continue;
            };
            let period_start = period_start(client.budget_period, now_ms);
            let (spent, reserved) = match inner.clients.remove(&client.id) {
                Some(old)
                    if old.period == client.budget_period && old.period_start == period_start =>
                {
                    (old.spent, old.reserved)
                }
                _ => {
                    let spent = restored
                        .entry(period_start)
                        .or_insert_with(|| spent_since(period_start))
                        .get(client.id.as_str())
                        .copied()
                        .unwrap_or(0);
                    (spent, 0)
                }
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
        if budget.spent + budget.reserved + amount > budget.limit {
            return Err(Exhausted {
                spent: budget.spent,
                budget: budget.limit,
                resets_at_ms: period_end(budget.period, budget.period_start),
                period: budget.period,
            });
        }
        budget.reserved += amount;
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
            budget.spent += cost.unwrap_or(0);
        } else if let Some(cost) = cost {
            // The period turned while the call was in flight: charge the new one.
            budget.roll(now_ms());
            budget.spent += cost;
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
    fn clients_without_a_budget_reserve_nothing() {
        let config = config(1, "month");
        let budgets = Budgets::new(&config, |_| HashMap::new());
        assert!(budgets
            .reserve(&config.clients.clients[1], &route())
            .unwrap()
            .is_none());
    }
}
