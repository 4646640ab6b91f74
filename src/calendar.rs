//! UTC calendar arithmetic (days since the epoch ↔ dates) for budget periods and the sandbox,
//! without a date crate.

/// A UTC calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilDate {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

/// Days since 1970-01-01 → calendar date (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> CivilDate {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    CivilDate {
        year,
        // Both are in range by construction (1..=31, 1..=12).
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
    }
}

/// Calendar date → days since 1970-01-01 (`days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first moment (ms since the epoch) of the UTC day holding `ms`.
pub fn day_start_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The first moment of the UTC month holding `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let date = civil_from_days(ms.div_euclid(DAY_MS));
    days_from_civil(date.year, date.month, 1) * DAY_MS
}

/// The first moment of the UTC month after the one holding `ms`.
pub fn next_month_start_ms(ms: i64) -> i64 {
    let date = civil_from_days(ms.div_euclid(DAY_MS));
    let (year, month) = if date.month == 12 {
        (date.year + 1, 1)
    } else {
        (date.year, date.month + 1)
    };
    days_from_civil(year, month, 1) * DAY_MS
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a moment in ms since the epoch.
pub fn format_utc(ms: i64) -> String {
    let date = civil_from_days(ms.div_euclid(DAY_MS));
    let secs = ms.rem_euclid(DAY_MS) / 1000;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.year,
        date.month,
        date.day,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days_start_where_the_calendar_says() {
        // 2026-11-24T12:34:56Z
        let t = days_from_civil(2026, 11, 24) * DAY_MS + 45_296_000;
        assert_eq!(format_utc(t), "2026-11-24T12:34:56Z");
        assert_eq!(format_utc(day_start_ms(t)), "2026-11-24T00:00:00Z");
        assert_eq!(format_utc(month_start_ms(t)), "2026-11-01T00:00:00Z");
        assert_eq!(format_utc(next_month_start_ms(t)), "2026-12-01T00:00:00Z");
        let december = days_from_civil(2026, 12, 31) * DAY_MS;
        assert_eq!(
            format_utc(next_month_start_ms(december)),
            "2027-01-01T00:00:00Z"
        );
    }
}
