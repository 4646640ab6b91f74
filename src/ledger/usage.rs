//! Reading the ledger back: `usage` reports (SPEC §3 `usage`, admin `GET /usage`), their three
//! renderings, and `spent_since` for restoring budgets. Everything here opens the file
//! read-only, so it works while a gateway writes to it (WAL).
//!
//! A report sums raw rows from `since` on and the daily roll-ups of whole days from `since` on:
//! a report that starts mid-way through a day already folded (older than the retention) leaves
//! that day out rather than count calls from before `since`.
//!
//! A credit figure above 2^53 (which only an older gateway wrote: it stored an absurd upstream
//! figure as `i64::MAX`) is reported as unknown: the call counts in `unknown_credit_requests`
//! and adds nothing to `credits_used`; a roll-up whose credits are above 2^53 counts all its
//! calls so. Credits are summed with SQLite's `TOTAL` (exact up to 2^53, and it cannot fail
//! where `SUM` stops with "integer overflow"), totals add with saturation: no row can make a
//! report fail.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::params;
use serde::Serialize;

use super::schema::{first_whole_day, known_credits, open_read_only};
use super::LedgerError;

/// Reads `--since` / `?since=`: a duration back from `now_ms` (`24h`, `7d`, `90m`), a date
/// (`2026-11-01`, UTC midnight) or an RFC 3339 timestamp (`2026-11-01T12:00:00Z`,
/// `2026-11-01T14:00:00+02:00`). Returns unix milliseconds.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid since {s:?}: expected a duration back from now (24h, 7d, 90m), a date \
             (2026-11-01, UTC) or an RFC 3339 timestamp (2026-11-01T12:00:00Z)"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if s.as_bytes()[0].is_ascii_digit() && s.len() >= 10 && s.as_bytes().get(4) == Some(&b'-') {
        return parse_date_or_timestamp(s).ok_or_else(bad);
    }
    let back = humantime::parse_duration(s).map_err(|_| bad())?;
    let back_ms = i64::try_from(back.as_millis()).map_err(|_| bad())?;
    now_ms.checked_sub(back_ms).ok_or_else(bad)
}

fn parse_date_or_timestamp(s: &str) -> Option<i64> {
    let s = s.to_ascii_uppercase();
    if s.len() == 10 {
        return to_ms(humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()?);
    }
    // humantime reads only `Z`; an RFC 3339 offset is applied by hand.
    let (base, offset_s) = if let Some(base) = s.strip_suffix('Z') {
        (base, 0)
    } else {
        let (base, offset) = s.split_at(s.len().checked_sub(6)?);
        let sign = match offset.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = offset[1..].split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 23 || m > 59 || offset[1..3].contains(['+', '-']) {
            return None;
        }
        (base, sign * (h * 3600 + m * 60))
    };
    let utc = to_ms(humantime::parse_rfc3339(&format!("{base}Z")).ok()?)?;
    utc.checked_sub(offset_s * 1000)
}

fn to_ms(t: std::time::SystemTime) -> Option<i64> {
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// `2026-11-01T12:00:00Z`, with milliseconds only when there are some.
fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// What a report's rows are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Client,
    Account,
    Route,
    /// UTC calendar day, `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Account => "account",
            Self::Route => "route",
            Self::Day => "day",
        }
    }

    /// The key column in `requests` and in `daily`.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Self::Client => ("client", "client"),
            Self::Account => ("COALESCE(account, '')", "account"),
            Self::Route => ("route", "route"),
            Self::Day => ("strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')", "day"),
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "client" => Ok(Self::Client),
            "account" => Ok(Self::Account),
            "route" => Ok(Self::Route),
            "day" => Ok(Self::Day),
            _ => Err(format!(
                "invalid by {s:?}: expected client, account, route or day"
            )),
        }
    }
}

/// How a report is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal, with a TOTAL line.
    Table,
    /// One object: `since`, `by`, `rows`, `total`.
    Json,
    /// RFC 4180: header line, one line per key, CRLF; no total line (a spreadsheet sums).
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            _ => Err(format!("invalid format {s:?}: expected table, json or csv")),
        }
    }
}

/// The figures of one group (or of the total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageCounts {
    pub requests: u64,
    /// Credits the upstream reported; calls with unknown credits add nothing here.
    pub credits_used: u64,
    /// Calls answered from the upstream cache (0 credits).
    pub cached_requests: u64,
    /// Calls whose credits the upstream did not report: `credits_used` may be low by these.
    pub unknown_credit_requests: u64,
    /// Calls answered with status >= 400.
    pub errors: u64,
}

impl UsageCounts {
    fn add(&mut self, other: &UsageCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.credits_used = self.credits_used.saturating_add(other.credits_used);
        self.cached_requests = self.cached_requests.saturating_add(other.cached_requests);
        self.unknown_credit_requests = self
            .unknown_credit_requests
            .saturating_add(other.unknown_credit_requests);
        self.errors = self.errors.saturating_add(other.errors);
    }

    fn cells(&self) -> [u64; 5] {
        [
            self.requests,
            self.credits_used,
            self.cached_requests,
            self.unknown_credit_requests,
            self.errors,
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// Client name, account (`(none)` for team routes), route template or `YYYY-MM-DD`.
    pub key: String,
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// A usage report: rows ordered by credits (most first; by day: chronological) and a total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    pub since_ms: i64,
    pub by: GroupBy,
    pub rows: Vec<UsageRow>,
    pub total: UsageCounts,
}

/// The key shown for calls without an account.
const NO_ACCOUNT: &str = "(none)";

const COLUMNS: [&str; 5] = [
    "requests",
    "credits_used",
    "cached_requests",
    "unknown_credit_requests",
    "errors",
];

/// Shorter headers for a terminal; same order as `COLUMNS`.
const TABLE_COLUMNS: [&str; 5] = ["requests", "credits", "cached", "unknown_credits", "errors"];

/// Credit spend from `since_ms` on, grouped `by`, from the ledger file at `path` (read-only).
pub fn usage(path: &Path, since_ms: i64, by: GroupBy) -> Result<UsageReport, LedgerError> {
    let conn = open_read_only(path)?;
    let (raw_key, daily_key) = by.columns();
    let known = known_credits("credits_used");
    let roll_up_known = known_credits("credits");
    let sql = format!(
        "SELECT key, SUM(requests), TOTAL(credits), SUM(cached), SUM(unknown), SUM(errors) FROM (
             SELECT {raw_key} AS key, COUNT(*) AS requests,
                    TOTAL({known}) AS credits, SUM(cached IS 1) AS cached,
                    SUM({known} IS NULL) AS unknown, SUM(status >= 400) AS errors
             FROM requests WHERE ts_ms >= ?1 GROUP BY 1
             UNION ALL
             SELECT {daily_key}, SUM(requests), TOTAL({roll_up_known}), SUM(cached_requests),
                    SUM(CASE WHEN {roll_up_known} IS NULL THEN requests
                             ELSE unknown_credit_requests END),
                    SUM(errors)
             FROM daily WHERE day >= ?2 GROUP BY 1
         ) GROUP BY key"
    );
    let sqlite = |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut stmt = conn.prepare(&sql).map_err(sqlite)?;
    let mut rows = stmt
        .query_map(params![since_ms, first_whole_day(since_ms)], |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            // A float sum of whole numbers: `as` saturates (and reads NaN as 0).
            let credits = |i| r.get::<_, f64>(i).map(|v| v as u64);
            Ok(UsageRow {
                key: r.get(0)?,
                counts: UsageCounts {
                    requests: n(1)?,
                    credits_used: credits(2)?,
                    cached_requests: n(3)?,
                    unknown_credit_requests: n(4)?,
                    errors: n(5)?,
                },
            })
        })
        .map_err(sqlite)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite)?;
    if by == GroupBy::Account {
        for row in rows.iter_mut().filter(|r| r.key.is_empty()) {
            row.key = NO_ACCOUNT.into();
        }
    }
    if by == GroupBy::Day {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        rows.sort_by(|a, b| {
            b.counts
                .credits_used
                .cmp(&a.counts.credits_used)
                .then_with(|| a.key.cmp(&b.key))
        });
    }
    let mut total = UsageCounts::default();
    for row in &rows {
        total.add(&row.counts);
    }
    Ok(UsageReport {
        since_ms,
        by,
        rows,
        total,
    })
}

/// Credits per client from `since_ms` on (raw rows, and roll-ups of whole days from it on).
pub fn spent_since(path: &Path, since_ms: i64) -> Result<HashMap<String, u64>, LedgerError> {
    let report = usage(path, since_ms, GroupBy::Client)?;
    Ok(report
        .rows
        .into_iter()
        .map(|row| (row.key, row.counts.credits_used))
        .collect())
}

impl UsageReport {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Json => self.json(),
            Format::Csv => self.csv(),
        }
    }

    fn table(&self) -> String {
        let header: Vec<String> = std::iter::once(self.by.as_str())
            .chain(TABLE_COLUMNS)
            .map(|h| h.to_ascii_uppercase())
            .collect();
        let mut lines: Vec<[String; 6]> = Vec::with_capacity(self.rows.len() + 2);
        let line = |key: &str, counts: &UsageCounts| {
            let c = counts.cells().map(|v| v.to_string());
            [
                key.to_string(),
                c[0].clone(),
                c[1].clone(),
                c[2].clone(),
                c[3].clone(),
                c[4].clone(),
            ]
        };
        lines.push([0, 1, 2, 3, 4, 5].map(|i| header[i].clone()));
        lines.extend(self.rows.iter().map(|r| line(&r.key, &r.counts)));
        lines.push(line("TOTAL", &self.total));
        let mut widths = [0usize; 6];
        for l in &lines {
            for (w, cell) in widths.iter_mut().zip(l) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for l in &lines {
            let _ = write!(out, "{:<w$}", l[0], w = widths[0]);
            for (cell, w) in l.iter().zip(widths).skip(1) {
                let _ = write!(out, "  {cell:>w$}");
            }
            out.push('\n');
        }
        out
    }

    fn json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            since: String,
            by: GroupBy,
            rows: &'a [UsageRow],
            total: &'a UsageCounts,
        }
        let json = Json {
            since: rfc3339(self.since_ms),
            by: self.by,
            rows: &self.rows,
            total: &self.total,
        };
        // Plain structs of strings and integers: serialization cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
    }

    fn csv(&self) -> String {
        let mut out = String::new();
        out.push_str(self.by.as_str());
        for c in COLUMNS {
            out.push(',');
            out.push_str(c);
        }
        out.push_str("\r\n");
        for row in &self.rows {
            out.push_str(&csv_field(&row.key));
            for v in row.counts.cells() {
                let _ = write!(out, ",{v}");
            }
            out.push_str("\r\n");
        }
        out
    }
}

/// RFC 4180: quote a field holding a comma, quote, CR or LF (or edge spaces), doubling quotes.
fn csv_field(s: &str) -> String {
    let needs = s.contains([',', '"', '\r', '\n']) || s.starts_with(' ') || s.ends_with(' ');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_793_620_800_000; // 2026-11-02T12:00:00Z

    #[test]
    fn since_reads_durations_dates_and_timestamps() {
        assert_eq!(parse_since("24h", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse_since("7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_since("90m", NOW), Ok(NOW - 90 * 60_000));
        assert_eq!(parse_since(" 1h 30m ", NOW), Ok(NOW - 90 * 60_000));
        assert_eq!(parse_since("2026-11-01", NOW), Ok(1_793_491_200_000));
        assert_eq!(
            parse_since("2026-11-02T12:00:00Z", NOW),
            Ok(NOW),
            "RFC 3339 in UTC"
        );
        assert_eq!(parse_since("2026-11-02T14:00:00+02:00", NOW), Ok(NOW));
        assert_eq!(
            parse_since("2026-11-02t07:30:00.250-04:30", NOW),
            Ok(NOW + 250)
        );
    }

    #[test]
    fn since_refuses_what_it_cannot_read_with_a_clear_message() {
        for bad in [
            "",
            "yesterday",
            "24",
            "2026-13-01",
            "2026-11-01T25:00:00Z",
            "2026-11-01T12:00:00",
            "2026-11-01T12:00:00+2:00",
        ] {
            let err = parse_since(bad, NOW).unwrap_err();
            assert!(err.contains("expected a duration"), "{bad:?}: {err}");
        }
        assert!(parse_since("999999999999d", NOW).is_err());
    }

    #[test]
    fn group_by_and_format_parse_their_names() {
        assert_eq!("client".parse(), Ok(GroupBy::Client));
        assert_eq!("Account".parse(), Ok(GroupBy::Account));
        assert_eq!("route".parse(), Ok(GroupBy::Route));
        assert_eq!("day".parse(), Ok(GroupBy::Day));
        assert!("week"
            .parse::<GroupBy>()
            .unwrap_err()
            .contains("client, account"));
        assert_eq!("table".parse(), Ok(Format::Table));
        assert_eq!("JSON".parse(), Ok(Format::Json));
        assert_eq!("csv".parse(), Ok(Format::Csv));
        assert!("xml"
            .parse::<Format>()
            .unwrap_err()
            .contains("table, json or csv"));
    }

    #[test]
    fn csv_fields_are_quoted_per_rfc_4180() {
        assert_eq!(csv_field("crm-app"), "crm-app");
        assert_eq!(csv_field("PUT /api/x"), "PUT /api/x");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn since_in_json_shows_milliseconds_only_when_there_are_some() {
        assert_eq!(rfc3339(NOW), "2026-11-02T12:00:00Z");
        assert_eq!(rfc3339(NOW + 5), "2026-11-02T12:00:00.005Z");
    }
}
