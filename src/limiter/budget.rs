//! The upstream budget: how many requests the shared key may send, and when.
//!
//! A GCRA (generic cell rate algorithm) paces requests at `floor(limit × headroom)` per minute
//! with a burst of `limit - that + 1`, which bounds any 60-second window (so any upstream
//! minute) to at most `limit`. It is written out here rather than taken from governor because
//! the budget needs three things governor's limiter does not offer: a look at the next free slot
//! without taking it (for the fair queue), giving a slot back (cached upstream answers do not
//! count), and rescaling to a new limit.
//!
//! On top of the pacing, the upstream's own reports steer it: `remaining_minute` lower than what
//! the gateway sent implies someone else uses the key, so the window's allowance shrinks to it
//! (at 0: hold until the minute turns); an upstream 429 pauses everything for its `Retry-After`.
//!
//! # A new limit
//!
//! The GCRA's state is its theoretical arrival time `tat`; `tat - now` is what the gateway owes
//! the pace, `(tat - now) / period` slots. When the upstream reports a new `limit_minute`, the
//! owed slots are kept and their time is rescaled to the new period: `tat' = now + (tat - now) ×
//! period' / period` (rounded up). Keeping the old `tat` instead would keep the old pace: after
//! one report of 10 a minute, 6.7 s owed per request, while the next report says 5000 again.
//! Slots the rescaled state lets through at once are further bounded by the `remaining_minute`
//! of the same report, which becomes the minute's allowance right after the rescale.
//!
//! Why no 60-second window in which the limit did not fall holds more than the limit in force
//! at its end (with a constant limit, SPEC §6's bound): count the owed slots `x`. Each request
//! adds one; between requests `x` falls by `dt / period` (never below 0); a request goes only
//! when `x ≤ burst - 1`; a rise leaves `x` as it was (or rounds it up). For `n` requests
//! inside one window, the `x` before the last is at least `n - 1` minus what fell during the
//! window, and what fell is at most `∫ dt / period(t)`, less than the largest `per_minute` in
//! force in the window because `period ≥ 60 s / per_minute`. So `n - 1 < burst - 1 +
//! max(per_minute)`, and when the limit only rose, that maximum is the newest limit's: `n ≤
//! burst + per_minute - 1 = limit`. Nothing is assumed about `x` at the window's start, so a
//! window starting after a fall is bounded by the new limit too.
//!
//! A fall cannot keep that bound for windows reaching back before it: requests already sent
//! under the old limit cannot be unsent, and they are in the upstream's count for its minute,
//! whose `remaining_minute` the allowance enforces. Rescaled slot for slot, a fall would turn
//! them into a wait far beyond that minute (500 slots owed at 5000 a minute are 55 minutes at
//! 10), so a rescale never moves the next slot further away than it was: the owed time is
//! capped at the old wait plus the new tolerance. After a fall the next slot is then as near
//! as it was (or free now), with the new burst spent. The cap never binds on a rise: a higher
//! limit has a shorter period and a burst at least as large (`limit - floor(limit × headroom)`
//! never shrinks as `limit` grows), so the slots owed, rescaled, fit under it.
//!
//! What a fall's cap forgave stays forgiven, so across a one-off low report (a fall, then a
//! rise back) the gateway may burst again. In the upstream's minute, the `remaining_minute` of
//! the report that raised the limit still bounds that, through the allowance; only the
//! gateway's own stricter bound over any 60 seconds is not kept across a fall.

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

    /// A new learned limit: its pace, with the slots owed rescaled to it (see the module doc).
    fn resize(&mut self, limit: u32, now: Duration) {
        tracing::info!(
            from = self.limit,
            to = limit,
            "upstream rate limit changed; rescaling the budget"
        );
        let (per_minute, period, burst) = pacing(limit, self.headroom);
        self.limit = limit;
        self.per_minute = per_minute;
        self.gcra.rescale(period, burst, now);
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

    /// A new pace. The slots owed at `now` are kept, their time rescaled to the new period,
    /// but never so that the next slot moves further away (the module doc says why).
    fn rescale(&mut self, period: Duration, burst: u32, now: Duration) {
        let owed = self.tat.saturating_sub(now);
        let rescaled = rescale(owed, period, self.period);
        let tolerance = period * burst.saturating_sub(1);
        // The wait for the next slot stays at most what it was. It binds only when the pace
        // slows: a higher limit has a shorter period and a burst at least as large, so then
        // `rescaled ≤ cap` and every owed slot stays owed.
        let cap = owed.saturating_sub(self.tolerance) + tolerance;
        self.period = period;
        self.tolerance = tolerance;
        self.tat = now + rescaled.min(cap);
    }
}

/// `owed × to / from`, rounded up to the nanosecond: a slot owed stays a whole slot.
fn rescale(owed: Duration, to: Duration, from: Duration) -> Duration {
    let from = from.as_nanos().max(1);
    let nanos = (owed.as_nanos() * to.as_nanos()).div_ceil(from);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
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

    fn report(limit: Option<u32>, remaining: Option<u32>) -> UpstreamReport {
        UpstreamReport {
            limit_minute: limit,
            remaining_minute: remaining,
            cached: false,
        }
    }

    /// Takes a slot that must be free now, and ends its request.
    fn take_now(budget: &mut UpstreamBudget) -> Ticket {
        let ticket = budget.try_take().expect("a free slot");
        budget.finish(ticket);
        ticket
    }

    /// Takes every slot free now; how many.
    fn take_all_free(budget: &mut UpstreamBudget) -> usize {
        let mut taken = 0;
        while let Ok(ticket) = budget.try_take() {
            budget.finish(ticket);
            taken += 1;
        }
        taken
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_of_the_old_limit_right_after_a_low_one_leaves_no_stale_pacing() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 0.9);
        let first = take_now(&mut budget);
        budget.observe(first, report(Some(10), Some(9)));
        // At 10 a minute: a burst of 2, so one more now; then 6.7 s a slot.
        let second = take_now(&mut budget);
        budget.observe(second, report(Some(5000), Some(4498)));
        assert_eq!(budget.limit(), 5000);
        assert_eq!(budget.wait(), Duration::ZERO, "no pace of 10 a minute left");
        // The new burst of 501, less the two slots still owed (now 13 ms each).
        assert_eq!(take_all_free(&mut budget), 499);
        assert_eq!(
            budget.wait(),
            Duration::from_nanos(60_000_000_000u64.div_ceil(4500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_report_of_a_limit_of_1_is_undone_by_the_next_report() {
        let mut budget = UpstreamBudget::new(clock(), 1000, 0.9);
        let (first, second) = (take_now(&mut budget), take_now(&mut budget));
        budget.observe(first, report(Some(1), None));
        let wait = budget.wait();
        assert!(wait < Duration::from_millis(200), "{wait:?}");
        tokio::time::advance(wait).await;
        // One a minute: the request taken now owes the whole minute.
        let third = take_now(&mut budget);
        assert!(budget.wait() > Duration::from_secs(59));
        budget.observe(second, report(Some(5000), Some(4997)));
        assert_eq!(budget.wait(), Duration::ZERO);
        budget.observe(third, report(Some(5000), Some(4996)));
        assert!(take_all_free(&mut budget) >= 499);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fall_never_moves_the_next_slot_further_away() {
        let mut budget = UpstreamBudget::new(clock(), 5000, 0.9);
        assert_eq!(take_all_free(&mut budget), 501);
        let last = take_now_after_wait(&mut budget).await;
        let before = budget.wait();
        assert_eq!(before, Duration::from_nanos(13_333_334));
        // 502 slots owed at 13 ms would be 56 minutes at 10 a minute.
        budget.observe(last, report(Some(10), None));
        assert_eq!(budget.wait(), before);
        take_now_after_wait(&mut budget).await;
        assert_eq!(
            budget.wait(),
            Duration::from_nanos(6_666_666_667),
            "then the pace of 10 a minute, from a spent burst"
        );
    }

    /// Waits for the next slot and takes it.
    async fn take_now_after_wait(budget: &mut UpstreamBudget) -> Ticket {
        tokio::time::advance(budget.wait()).await;
        take_now(budget)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_in_which_the_limit_did_not_fall_holds_more_than_the_newest_limit() {
        // (second, limit reported): rises from a low pace and from a spent burst, falls between.
        let reports = [
            (20, 10),
            (40, 5000),
            (70, 60),
            (75, 90),
            (80, 1000),
            (130, 100),
            (140, 3000),
        ];
        let mut budget = UpstreamBudget::new(clock(), 100, 0.9);
        let mut next_report = 0;
        // Each request: when it went, and the limit in force then.
        let mut sent: Vec<(Duration, u32)> = Vec::new();
        let until = Duration::from_secs(200);
        while budget.clock.elapsed() < until {
            let now = budget.clock.elapsed();
            if let Some(&(at, limit)) = reports.get(next_report) {
                if now >= Duration::from_secs(at) {
                    let ticket = Ticket {
                        minute: budget.clock.minute_of(now),
                    };
                    budget.observe(ticket, report(Some(limit), None));
                    next_report += 1;
                    continue;
                }
            }
            match budget.try_take() {
                Ok(ticket) => {
                    budget.finish(ticket);
                    sent.push((now, budget.limit()));
                }
                Err(wait) => {
                    let until_report = reports
                        .get(next_report)
                        .map_or(until, |&(at, _)| Duration::from_secs(at))
                        .saturating_sub(now);
                    tokio::time::advance(wait.min(until_report)).await;
                }
            }
        }
        let falls: Vec<Duration> = reports
            .iter()
            .zip(std::iter::once(&(0, 100)).chain(&reports))
            .filter(|((_, limit), (_, before))| limit < before)
            .map(|((at, _), _)| Duration::from_secs(*at))
            .collect();
        let mut checked = 0;
        let mut end = 0;
        for (first, &(start, _)) in sent.iter().enumerate() {
            while end < sent.len() && sent[end].0 < start + MINUTE {
                end += 1;
            }
            let (last_at, newest) = sent[end - 1];
            // A report at the moment of a request came before it.
            if falls.iter().any(|fall| start < *fall && *fall <= last_at) {
                continue;
            }
            let n = end - first;
            assert!(
                n <= newest as usize,
                "{n} requests in the window from {start:?}, limit {newest}"
            );
            checked += 1;
        }
        assert!(checked > sent.len() / 3, "{checked} of {}", sent.len());
        // Each rise takes effect at once: the new burst goes as soon as it is reported.
        let sent_in = |from: u64, to: u64| {
            sent.iter()
                .filter(|(at, _)| (Duration::from_secs(from)..Duration::from_secs(to)).contains(at))
                .count()
        };
        assert!(sent_in(40, 41) >= 450, "{}", sent_in(40, 41));
        assert!(sent_in(140, 141) >= 250, "{}", sent_in(140, 141));
    }
}
