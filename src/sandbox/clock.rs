//! Wall-clock time for the sandbox, behind a trait so tests can move time without sleeping,
//! plus the few UTC calendar conversions the routes need (no date crate is in the stack).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds in one UTC day.
pub(crate) const DAY_MS: u64 = 86_400_000;

/// Where the sandbox reads "now" from. The rate-limit window, cache expiry, `cached_at` and the
/// stats date range all go through it.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (UTC).
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The gateway limiter's clock (tokio time anchored to the wall clock), so that an in-process
/// sandbox and the limiter agree on minutes in paused test time.
impl Clock for crate::limiter::LimiterClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.wall_now().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock the test moves by hand.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl ManualClock {
    pub(crate) fn at(ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(ms))
    }
    pub(crate) fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
use crate::calendar::CivilDate;
pub(crate) use crate::calendar::{civil_from_days, days_from_civil};

/// `2025-01-29T16:30:43+00:00`, the form the upstream uses for `cached_at`.
pub(crate) fn format_rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let d = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        d.year,
        d.month,
        d.day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses the ISO 8601 forms the stats route accepts for `before` / `after`:
/// `YYYY-MM-DD`, optionally followed by `T` (or a space) `HH:MM[:SS[.fff]]` and `Z` or `±HH:MM`.
/// Returns milliseconds since the epoch; `None` when it is not such a date or is before 1970.
pub(crate) fn parse_iso8601_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let date = s.get(..10)?;
    let mut parts = date.split('-');
    let year = i64::from(digits(parts.next()?)?);
    let month = digits(parts.next()?)?;
    let day = digits(parts.next()?)?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs_of_day: i64 = 0;
    let mut offset_secs: i64 = 0;
    let rest = &s[10..];
    if !rest.is_empty() {
        let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
        let (time, zone) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let time = time.split('.').next()?;
        let mut hms = time.split(':');
        let h = digits(hms.next()?)?;
        let m = digits(hms.next()?)?;
        let sec = match hms.next() {
            Some(x) => digits(x)?,
            None => 0,
        };
        if hms.next().is_some() || h > 23 || m > 59 || sec > 60 {
            return None;
        }
        secs_of_day = i64::from(h * 3600 + m * 60 + sec);
        match zone {
            "" | "Z" | "z" => {}
            _ => {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (zh, zm) = zone[1..].split_once(':')?;
                offset_secs = sign * i64::from(digits(zh)? * 3600 + digits(zm)? * 60);
            }
        }
    }
    let total = days_from_civil(year, month, day) * 86_400 + secs_of_day - offset_secs;
    u64::try_from(total).ok().map(|t| t * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversions_round_trip() {
        for days in [-1, 0, 59, 365, 20_000, 20_607] {
            let d = civil_from_days(days);
            assert_eq!(days_from_civil(d.year, d.month, d.day), days);
        }
        assert_eq!(
            civil_from_days(0),
            CivilDate {
                year: 1970,
                month: 1,
                day: 1
            }
        );
    }

    #[test]
    fn cached_at_uses_the_upstream_rfc3339_form() {
        assert_eq!(
            format_rfc3339(1_738_168_243_000),
            "2025-01-29T16:30:43+00:00"
        );
    }

    #[test]
    fn stats_dates_parse_in_the_documented_iso_forms() {
        let day = parse_iso8601_ms("2026-05-03").unwrap();
        assert_eq!(parse_iso8601_ms("2026-05-03T00:00:00Z"), Some(day));
        assert_eq!(parse_iso8601_ms("2026-05-03T02:00:00+02:00"), Some(day));
        assert_eq!(parse_iso8601_ms("2026-05-03T00:00:00.123Z"), Some(day));
        assert_eq!(
            parse_iso8601_ms("2026-06-03T23:59:59Z"),
            Some(day + 31 * DAY_MS + DAY_MS - 1000)
        );
        assert_eq!(parse_iso8601_ms("yesterday"), None);
        assert_eq!(parse_iso8601_ms("2026-13-01"), None);
    }
}
