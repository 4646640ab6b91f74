//! The ledger as the tests see it: its rows read back with a read-only SQLite connection, the
//! usage report over them, and rows seeded through the gateway's real writer.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ofapi_gateway::config::LedgerConfig;
pub use ofapi_gateway::ledger::LedgerRow;
use ofapi_gateway::ledger::{usage, GroupBy, Ledger, Outcome, UsageReport};

/// One row of the ledger's `requests` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub request_id: String,
    pub client: String,
    pub method: String,
    pub route: String,
    pub account: Option<String>,
    pub status: u16,
    pub credits_used: Option<u64>,
    pub balance: Option<u64>,
    pub cached: Option<bool>,
    pub outcome: String,
}

/// Every raw row of the ledger at `path`, oldest first, read with a read-only connection.
pub fn ledger_rows(path: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open ledger {}: {e}", path.display()));
    let mut stmt = conn
        .prepare(
            "SELECT request_id, client, method, route, account, status, credits_used, balance,
                    cached, outcome FROM requests ORDER BY id",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(Row {
            request_id: r.get(0)?,
            client: r.get(1)?,
            method: r.get(2)?,
            route: r.get(3)?,
            account: r.get(4)?,
            status: r.get(5)?,
            credits_used: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            balance: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            cached: r.get::<_, Option<i64>>(8)?.map(|v| v != 0),
            outcome: r.get(9)?,
        })
    })
    .expect("query")
    .collect::<Result<Vec<_>, _>>()
    .expect("rows")
}

/// The one row of the call with request id `id`.
#[track_caller]
pub fn row_of<'a>(rows: &'a [Row], id: &str) -> &'a Row {
    let found: Vec<&Row> = rows.iter().filter(|r| r.request_id == id).collect();
    assert_eq!(
        found.len(),
        1,
        "rows for request {id}: {found:?}\nall: {rows:?}"
    );
    found[0]
}

/// The usage report of every row of the ledger at `path`, by client.
pub fn report(path: &Path) -> UsageReport {
    usage(path, 0, GroupBy::Client).expect("usage report from the ledger")
}

/// Why the usage report of the ledger at `path` cannot be made (it must fail).
pub fn report_error(path: &Path) -> String {
    match usage(path, 0, GroupBy::Client) {
        Ok(_) => panic!("a usage report of {} was made", path.display()),
        Err(error) => error.to_string(),
    }
}

/// Now, in Unix milliseconds (a ledger row's `ts_ms`).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A row as the gateway writes one for a complete call: `client` called `route` (`"METHOD
/// /template"`) on `account` at `ts_ms`, answered `status`, at a cost of `credits` (unknown if
/// `None`).
pub fn ledger_row(
    ts_ms: i64,
    request_id: &str,
    client: &str,
    route: &str,
    account: Option<&str>,
    credits: Option<u64>,
    status: u16,
) -> LedgerRow {
    LedgerRow {
        ts_ms,
        request_id: request_id.into(),
        client: client.into(),
        method: route.split(' ').next().unwrap_or(route).into(),
        route: route.into(),
        account: account.map(Into::into),
        status,
        credits_used: credits,
        balance: Some(50_000),
        cached: Some(false),
        duration_ms: 20,
        outcome: Outcome::Complete,
    }
}

/// Writes `rows` to the ledger at `path` (created if need be) through the gateway's own writer,
/// and closes it.
pub async fn seed_ledger(path: &Path, rows: impl IntoIterator<Item = LedgerRow>) {
    let ledger = Ledger::open(&LedgerConfig {
        path: path.to_path_buf(),
        retention: Duration::from_secs(3650 * 86_400),
    })
    .expect("open the ledger to seed it");
    for row in rows {
        ledger.record(row);
    }
    ledger.close().await.expect("close the seeded ledger");
}
