//! The upstream budget: how many requests the shared key may send, and when.
//!
//! A GCRA (generic cell rate algorithm) paces requests at `floor(limit × headroom)` per minute
//! with a burst of `limit - that + 1`, which bounds any 60-second window (so any upstream
//! minute) to at most `limit`. It is written out here rather than taken from governor because
//! the budget needs three things governor's limiter does not offer: a look at the next free slot
//! without taking it (for the fair queue), giving a slot back (cached upstream answers do not
//! count), and resizing to a new limit without letting a burst through.
//!
//! On top of the pacing, the upstream's own reports steer it: `remaining_minute` lower than what
//! the gateway sent implies someone else uses the key, so the window's allowance shrinks to it
//! (at 0: hold until the minute turns); an upstream 429 pauses everything for its `Retry-After`.

use std::time::Duration;

use super::clock::LimiterClock;

/// A slot taken from the budget; given back when its answer arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The wall-clock minute in which the request went out: a report about another minute's
    /// window says nothing about this one.
    pub minute: u64,
}

/// What the upstream said about its limits in one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamReport {
    pub limit_minute: Option<u32>,
    pub remaining_minute: Option<u32>,
    /// A cached answer: it did not count against the upstream limit.
    pub cached: bool,
}

/// Where the budget stands, for the `RateLimit-*` response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetStatus {
    pub limit: u32,
    pub remaining: u32,
    pub reset: Duration,
}

#[derive(Debug)]
pub struct UpstreamBudget {
    clock: LimiterClock,
    headroom: f64,
    /// The upstream's per-minute limit in force: the latest it reported, else the config's.
    limit: u32,
    /// `floor(limit × headroom)`: the pace the gateway keeps.
    per_minute: u32,
    gcra: Gcra,
    /// The wall-clock minute the counters below belong to.
    minute: u64,
    /// Requests sent in this minute that counted upstream (cached answers are taken back).
    sent: u32,
    /// Slots left in this minute according to the upstream's latest `remaining_minute`.
    allowance: Option<i64>,
    /// Requests sent whose answer has not arrived yet.
    in_flight: u32,
    /// After an upstream 429: nothing goes out before this moment (time since the origin).
    paused_until: Option<Duration>,
}

impl UpstreamBudget {
    pub fn new(clock: LimiterClock, limit: u32, headroom: f64) -> Self {
        let now = clock.elapsed();
        let (per_minute, period, burst) = pacing(limit, headroom);
        Self {
            clock,
            headroom,
            limit,
            per_minute,
            gcra: Gcra::new(period, burst, now),
            minute: clock.minute_of(now),
            sent: 0,
            allowance: None,
            in_flight: 0,
            paused_until: None,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Time between two slots at the steady pace.
    pub fn slot_interval(&self) -> Duration {
        self.gcra.period
    }

    /// How long until a slot is free (zero: now). Takes nothing.
    pub fn wait(&mut self) -> Duration {
        let now = self.clock.elapsed();
        self.roll(now);
        if let Some(until) = self.paused_until {
            if until > now {
                return until - now;
            }
            self.paused_until = None;
        }
        if self.allowance.is_some_and(|left| left <= 0) {
            return self.clock.until_next_minute(now);
        }
        self.gcra.wait(now)
    }

    /// Takes a slot if one is free now, else says how long until one is.
    pub fn try_take(&mut self) -> Result<Ticket, Duration> {
        let wait = self.wait();
        if !wait.is_zero() {
            return Err(wait);
        }
        let now = self.clock.elapsed();
        self.gcra.take(now);
        self.sent += 1;
        if let Some(left) = &mut self.allowance {
            *left -= 1;
        }
        self.in_flight += 1;
        Ok(Ticket {
            minute: self.minute,
        })
    }

    /// A slot taken but never used (its request was not sent).
    pub fn give_back(&mut self, ticket: Ticket) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.uncount(ticket);
    }

    /// Takes a request back out of the pace and the minute's count.
    fn uncount(&mut self, ticket: Ticket) {
        self.gcra.give_back();
        if ticket.minute == self.minute {
            self.sent = self.sent.saturating_sub(1);
            if let Some(left) = &mut self.allowance {
                *left += 1;
            }
        }
    }

    /// The ticket's request is over: answered, failed or abandoned.
    pub fn finish(&mut self, _ticket: Ticket) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// What an answer said about the upstream's limits (from its headers, or later from the
    /// `_meta` of its body).
    pub fn observe(&mut self, ticket: Ticket, report: UpstreamReport) {
        let now = self.clock.elapsed();
        self.roll(now);
        if report.cached {
            // Not counted upstream, so not counted here either.
            self.uncount(ticket);
        }
        if let Some(limit) = report.limit_minute.filter(|l| *l > 0) {
            if limit != self.limit {
                self.resize(limit, now);
            }
        }
        if let (Some(remaining), true) = (report.remaining_minute, ticket.minute == self.minute) {
            // Requests still in flight may not be in the upstream's count yet: assume they are not.
            self.allowance = Some(i64::from(remaining) - i64::from(self.in_flight));
        }
    }

    /// The upstream answered 429: nothing goes out until `retry_after`, or the next minute.
    pub fn pause(&mut self, retry_after: Option<Duration>) {
        let now = self.clock.elapsed();
        let pause = retry_after.unwrap_or_else(|| self.clock.until_next_minute(now));
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Where the budget stands in the current minute.
    pub fn status(&mut self) -> BudgetStatus {
        let now = self.clock.elapsed();
        self.roll(now);
        let mut remaining = i64::from(self.per_minute) - i64::from(self.sent);
        if let Some(left) = self.allowance {
            remaining = remaining.min(left);
        }
        BudgetStatus {
            limit: self.per_minute,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
            reset: self.clock.until_next_minute(now),
        }
    }

    fn roll(&mut self, now: Duration) {
        let minute = self.clock.minute_of(now);
        if minute != self.minute {
            self.minute = minute;
            self.sent = 0;
            self.allowance = None;
        }
    }

    fn resize(&mut self, limit: u32, now: Duration) {
        tracing::info!(
            from = self.limit,
            to = limit,
            "upstream rate limit changed; resizing the budget"
        );
        let (per_minute, period, burst) = pacing(limit, self.headroom);
        self.limit = limit;
        self.per_minute = per_minute;
        self.gcra.resize(period, burst, now);
    }
}

/// `(per_minute, period, burst)` for an upstream limit: pace `floor(limit × headroom)` per
/// minute, and a burst small enough that no 60-second window holds more than `limit`.
fn pacing(limit: u32, headroom: f64) -> (u32, Duration, u32) {
    let limit = limit.max(1);
    let per_minute = ((f64::from(limit) * headroom).floor() as u32).clamp(1, limit);
    let burst = limit - per_minute + 1;
    // Rounded up: a period a nanosecond short would fit one more request into a minute.
    let period = Duration::from_nanos(60_000_000_000u64.div_ceil(u64::from(per_minute)));
    (per_minute, period, burst)
}

/// The GCRA state: `tat` is the theoretical arrival time of the next request at the steady
/// pace; a request conforms when it comes no earlier than `tat - tolerance`.
#[derive(Debug)]
struct Gcra {
    period: Duration,
    /// `(burst - 1) × period`: how far ahead of the pace a burst may run.
    tolerance: Duration,
    tat: Duration,
}

impl Gcra {
    fn new(period: Duration, burst: u32, now: Duration) -> Self {
        Self {
            period,
            tolerance: period * burst.saturating_sub(1),
            tat: now,
        }
    }

    fn wait(&self, now: Duration) -> Duration {
        self.tat.saturating_sub(self.tolerance).saturating_sub(now)
    }

    fn take(&mut self, now: Duration) {
        self.tat = self.tat.max(now) + self.period;
    }

    fn give_back(&mut self) {
        self.tat = self.tat.saturating_sub(self.period);
    }

    /// A new pace, starting with no burst in hand: the next slot is free now at the earliest.
    fn resize(&mut self, period: Duration, burst: u32, now: Duration) {
        self.period = period;
        self.tolerance = period * burst.saturating_sub(1);
        self.tat = self.tat.max(now + self.tolerance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A clock at the start of a wall-clock minute.
    fn clock() -> LimiterClock {
        LimiterClock::starting_at(Duration::from_secs(1_800_000_000 / 60 * 60))
    }

    #[test]
    fn pacing_bounds_every_window_by_the_limit() {
        assert_eq!(
            pacing(1000, 0.9),
            (900, Duration::from_nanos(66_666_667), 101)
        );
        assert_eq!(pacing(5000, 1.0), (5000, MINUTE / 5000, 1));
        assert_eq!(pacing(1, 0.5), (1, MINUTE, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_sixty_second_window_holds_more_than_the_limit() {
        let mut budget = UpstreamBudget::new(clock(), 100, 0.9);
        let mut sent_at = Vec::new();
        // Take every slot as soon as it is free, for three minutes.
        while budget.clock.elapsed() < Duration::from_secs(180) {
            match budget.try_take() {
                Ok(ticket) => {
                    sent_at.push(budget.clock.elapsed());
                    budget.finish(ticket);
                }
                Err(wait) => tokio::time::advance(wait).await,
            }
        }
        for (i, start) in sent_at.iter().enumerate() {
            let in_window = sent_at[i..]
                .iter()
                .take_while(|t| **t < *start + MINUTE)
                .count();
            assert!(
                in_window <= 100,
                "{in_window} requests in the window from {start:?}"
            );
        }
        // The steady pace is 90 a minute: at least 0.97 of it over three minutes.
        assert!(
            sent_at.len() >= (3.0 * 90.0 * 0.97) as usize,
            "{}",
            sent_at.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_holds_until_the_minute_turns() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 0.9);
        tokio::time::advance(Duration::from_secs(10)).await;
        let ticket = budget.try_take().unwrap();
        budget.finish(ticket);
        budget.observe(
            ticket,
            UpstreamReport {
                remaining_minute: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(budget.wait(), Duration::from_secs(50));
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(budget.wait(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_remaining_shrinks_the_minute_to_it() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 1.0);
        let ticket = budget.try_take().unwrap();
        budget.finish(ticket);
        budget.observe(
            ticket,
            UpstreamReport {
                remaining_minute: Some(3),
                ..Default::default()
            },
        );
        let mut taken = 0;
        while budget.clock.elapsed() < Duration::from_secs(59) {
            match budget.try_take() {
                Ok(t) => {
                    taken += 1;
                    budget.finish(t);
                }
                Err(wait) => tokio::time::advance(wait.min(Duration::from_secs(59))).await,
            }
        }
        assert_eq!(taken, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_about_another_minute_is_ignored() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 0.9);
        let ticket = budget.try_take().unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        budget.finish(ticket);
        budget.observe(
            ticket,
            UpstreamReport {
                remaining_minute: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(budget.wait(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_give_their_slot_back() {
        let mut budget = UpstreamBudget::new(clock(), 1, 1.0); // one a minute, no burst
        let ticket = budget.try_take().unwrap();
        assert!(budget.try_take().is_err());
        budget.finish(ticket);
        budget.observe(
            ticket,
            UpstreamReport {
                cached: true,
                ..Default::default()
            },
        );
        assert!(budget.try_take().is_ok());
        assert_eq!(budget.status().remaining, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_429_pauses_for_its_retry_after() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 0.9);
        budget.pause(Some(Duration::from_secs(7)));
        assert_eq!(budget.wait(), Duration::from_secs(7));
        budget.pause(None);
        assert_eq!(
            budget.wait(),
            Duration::from_secs(60),
            "until the minute turns"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_limit_resizes_without_a_burst() {
        let mut budget = UpstreamBudget::new(clock(), 100, 0.9);
        let ticket = budget.try_take().unwrap();
        budget.finish(ticket);
        budget.observe(
            ticket,
            UpstreamReport {
                limit_minute: Some(5000),
                ..Default::default()
            },
        );
        assert_eq!(budget.limit(), 5000);
        // Burst now 501, yet only one slot is free at once; then the new pace.
        assert!(budget.try_take().is_ok());
        let wait = budget.try_take().unwrap_err();
        assert_eq!(wait, Duration::from_nanos(60_000_000_000u64.div_ceil(4500)));
    }
}
