//! The ledger file: how it is opened (writer and read-only), its versioned schema, and the
//! retention fold. Kept apart from the writer loop so the SQL lives in one place.
//!
//! Schema (version 3):
//! - `requests`: one raw row per forwarded call, indexed by `ts_ms` (every query selects by
//!   time; version 1 also had a `(client, ts_ms)` index, which only slowed the inserts, and
//!   versions 1-2 checked `outcome IN (...)`, which costs a temporary b-tree per insert).
//! - `daily`: roll-ups of raw rows older than the retention, one row per UTC day, client,
//!   account (`''` when the call had none, so the primary key stays unique) and route.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::LedgerError;

/// Ordered migrations; `PRAGMA user_version` is the number applied so far. Append only: a
/// released step is never edited, a change is a new step.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: raw rows and daily roll-ups.
    "CREATE TABLE requests (
        id            INTEGER PRIMARY KEY,
        ts_ms         INTEGER NOT NULL,
        request_id    TEXT    NOT NULL,
        client        TEXT    NOT NULL,
        method        TEXT    NOT NULL,
        route         TEXT    NOT NULL,
        account       TEXT,
        status        INTEGER NOT NULL,
        credits_used  INTEGER,
        balance       INTEGER,
        cached        INTEGER,
        duration_ms   INTEGER NOT NULL,
        outcome       TEXT    NOT NULL CHECK (outcome IN ('complete', 'cut', 'error'))
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE INDEX requests_client_ts ON requests (client, ts_ms);
    CREATE TABLE daily (
        day                     TEXT    NOT NULL,
        client                  TEXT    NOT NULL,
        account                 TEXT    NOT NULL,
        route                   TEXT    NOT NULL,
        requests                INTEGER NOT NULL,
        credits                 INTEGER NOT NULL,
        cached_requests         INTEGER NOT NULL,
        unknown_credit_requests INTEGER NOT NULL,
        errors                  INTEGER NOT NULL,
        PRIMARY KEY (day, client, account, route)
    ) WITHOUT ROWID;",
    // 2: every query selects by time; a second index only made each insert slower.
    "DROP INDEX requests_client_ts;",
    // 3: the same table, with the outcome check spelled with `=` instead of `IN (...)`: SQLite
    // builds a temporary b-tree for an `IN` list on every row it checks, which doubled the cost
    // of an insert. SQLite cannot alter a CHECK in place, so the table is rebuilt.
    "CREATE TABLE requests_v3 (
        id            INTEGER PRIMARY KEY,
        ts_ms         INTEGER NOT NULL,
        request_id    TEXT    NOT NULL,
        client        TEXT    NOT NULL,
        method        TEXT    NOT NULL,
        route         TEXT    NOT NULL,
        account       TEXT,
        status        INTEGER NOT NULL,
        credits_used  INTEGER,
        balance       INTEGER,
        cached        INTEGER,
        duration_ms   INTEGER NOT NULL,
        outcome       TEXT    NOT NULL
                      CHECK (outcome = 'complete' OR outcome = 'cut' OR outcome = 'error')
    );
    INSERT INTO requests_v3 SELECT * FROM requests;
    DROP TABLE requests;
    ALTER TABLE requests_v3 RENAME TO requests;
    CREATE INDEX requests_ts ON requests (ts_ms);",
];

/// How the writer adds a row (kept here, next to the schema it must stay cheap against).
pub(crate) const INSERT_ROW: &str =
    "INSERT INTO requests (ts_ms, request_id, client, method, route, account, status,
                           credits_used, balance, cached, duration_ms, outcome)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Rows per multi-row insert (12 parameters each: far below SQLite's limit of 32 766).
pub(crate) const ROWS_PER_INSERT: usize = 32;

/// [`INSERT_ROW`] for [`ROWS_PER_INSERT`] rows at once.
pub(crate) static INSERT_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let (head, one) = INSERT_ROW.split_once("VALUES").unwrap_or((INSERT_ROW, ""));
    let many = vec![one.trim(); ROWS_PER_INSERT].join(", ");
    format!("{head}VALUES {many}")
});

/// The largest credit figure a report takes as real (`upstream::figures::MAX_CREDIT_FIGURE`,
/// 2^53); the gateway records nothing larger, but a file written by an older one may hold
/// `i64::MAX`. A larger (or negative) figure reads as unknown, like NULL.
pub(crate) const MAX_CREDITS_SQL: &str = "9007199254740992";

/// `credits_used` of a raw row when it is a real figure, else NULL (unknown).
pub(crate) fn known_credits(column: &str) -> String {
    format!("(CASE WHEN {column} BETWEEN 0 AND {MAX_CREDITS_SQL} THEN {column} END)")
}

/// The credits of a roll-up above this are unknown: it stores at most this, so that adding to
/// it never overflows, and reports count all its calls as of unknown cost.
const ROLL_UP_UNKNOWN_SQL: &str = "9007199254740993";

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const DAY_MS: i64 = 86_400_000;

/// Opens (creating folder and file if missing) the ledger for writing: WAL so readers (`usage`,
/// `spent_since`) never block the writer, `synchronous=NORMAL` (durable at each checkpoint,
/// a power cut loses at most the last transactions, never corrupts), schema migrated.
pub(crate) fn open_writable(path: &Path) -> Result<Connection, LedgerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let sqlite = |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(sqlite)?;
    // SQLite quietly falls back to read-only when it may not write; say so now, not at the
    // first batch.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(sqlite)? {
        return Err(LedgerError::Schema {
            path: path.to_path_buf(),
            reason: "the file is not writable".into(),
        });
    }
    conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Schema {
            path: path.to_path_buf(),
            reason: format!("could not switch to WAL journal mode (got {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite)?;
    migrate(&mut conn).map_err(|e| e.at(path))?;
    Ok(conn)
}

/// Opens an existing ledger read-only (for reports while a gateway writes to it).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, LedgerError> {
    if !path.exists() {
        return Err(LedgerError::Missing {
            path: path.to_path_buf(),
        });
    }
    let sqlite = |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    if version == 0 {
        return Err(LedgerError::Schema {
            path: path.to_path_buf(),
            reason: "not a ledger (no schema); is [ledger] path right?".into(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(newer_schema(path, version));
    }
    Ok(conn)
}

fn newer_schema(path: &Path, version: i64) -> LedgerError {
    LedgerError::Schema {
        path: path.to_path_buf(),
        reason: format!(
            "schema version {version} is newer than this gateway understands ({SCHEMA_VERSION})"
        ),
    }
}

/// A migration failure before the path is known to the message.
pub(crate) enum MigrateError {
    Sqlite(rusqlite::Error),
    Newer(i64),
}

impl MigrateError {
    fn at(self, path: &Path) -> LedgerError {
        match self {
            Self::Sqlite(source) => LedgerError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
            Self::Newer(version) => newer_schema(path, version),
        }
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Applies the migrations not yet applied, each in its own transaction with its version bump,
/// so a crash mid-way leaves a file at a whole version. Idempotent.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(MigrateError::Newer(version));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The first moment kept raw: midnight UTC of the day holding `now - retention`. Folding whole
/// days only means a roll-up always covers a full day, so reports from a midnight on are exact.
pub(crate) fn fold_horizon(now_ms: i64, retention: Duration) -> i64 {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(retention_ms);
    cutoff.div_euclid(DAY_MS) * DAY_MS
}

/// Folds raw rows older than `horizon_ms` into the daily roll-ups and deletes them, in one
/// transaction (a crash leaves either both or neither). Returns the number of rows folded.
///
/// Credit figures that are not real (see [`known_credits`]) fold as unknown calls. The credits
/// are summed with `TOTAL` (a float sum, which cannot fail) and stored capped at
/// `ROLL_UP_UNKNOWN_SQL`: a day whose real figures add up past 2^53 is a day of unknown cost,
/// and SQLite's `SUM` would stop the fold (and with it the start) with "integer overflow".
pub(crate) fn fold(conn: &mut Connection, horizon_ms: i64) -> rusqlite::Result<usize> {
    let known = known_credits("credits_used");
    let tx = conn.transaction()?;
    tx.execute(
        &format!(
            "INSERT INTO daily (day, client, account, route, requests, credits, cached_requests,
                                unknown_credit_requests, errors)
             SELECT strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch'), client,
                    COALESCE(account, ''), route, COUNT(*),
                    CAST(MIN(TOTAL({known}), {ROLL_UP_UNKNOWN_SQL}) AS INTEGER), SUM(cached IS 1),
                    SUM({known} IS NULL), SUM(status >= 400)
             FROM requests WHERE ts_ms < ?1
             GROUP BY 1, 2, 3, 4
             ON CONFLICT (day, client, account, route) DO UPDATE SET
                 requests = requests + excluded.requests,
                 credits = MIN(credits + excluded.credits, {ROLL_UP_UNKNOWN_SQL}),
                 cached_requests = cached_requests + excluded.cached_requests,
                 unknown_credit_requests =
                     unknown_credit_requests + excluded.unknown_credit_requests,
                 errors = errors + excluded.errors"
        ),
        params![horizon_ms],
    )?;
    let folded = tx.execute("DELETE FROM requests WHERE ts_ms < ?1", params![horizon_ms])?;
    tx.commit()?;
    Ok(folded)
}

/// `YYYY-MM-DD` (UTC) of a unix-ms moment, as stored in `daily.day`.
pub(crate) fn day_of(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let mut s = humantime::format_rfc3339(t).to_string();
    s.truncate(10);
    s
}

/// The first whole day starting at or after `since_ms`: roll-ups from this day on are counted
/// whole by a report from `since_ms`; an earlier day's roll-up is only partly inside it.
pub(crate) fn first_whole_day(since_ms: i64) -> String {
    let start = since_ms.div_euclid(DAY_MS) * DAY_MS;
    day_of(if start == since_ms {
        start
    } else {
        start + DAY_MS
    })
}
