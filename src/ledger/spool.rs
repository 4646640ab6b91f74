//! The spool: where a closing ledger puts the rows it could not commit (the file stayed
//! unwritable through `close`'s retries: a full disk, a lock, a broken file), so that a stop
//! does not lose them. It is a file of JSON lines next to the ledger (`<ledger>.unwritten.jsonl`),
//! appended to and synced; the next [`super::Ledger::open`] writes its rows into the ledger and
//! removes it.
//!
//! Importing is idempotent: a row already in the ledger (same `ts_ms` and `request_id`) is not
//! added again, so a stop between the import's commit and the file's removal duplicates nothing.
//! A line that cannot be read (cut by a crash while it was written) is skipped and counted.
//!
//! The spool shares the ledger's folder, so a disk full for the ledger may be full for it too:
//! then the rows are lost, and `close` says how many (see `writer`).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::{LedgerRow, Outcome};

/// The spool of the ledger at `ledger`.
pub(crate) fn path_for(ledger: &Path) -> PathBuf {
    let mut name = OsString::from(ledger.as_os_str());
    name.push(".unwritten.jsonl");
    PathBuf::from(name)
}

/// One row as a JSON line: [`LedgerRow`]'s fields, the outcome as its text.
#[derive(Serialize, Deserialize)]
struct Line {
    ts_ms: i64,
    request_id: String,
    client: String,
    method: String,
    route: String,
    account: Option<String>,
    status: u16,
    credits_used: Option<u64>,
    balance: Option<u64>,
    cached: Option<bool>,
    duration_ms: u64,
    outcome: String,
}

/// Appends `rows` to the spool at `path` and syncs it: when this returns `Ok`, they are on disk.
pub(crate) fn write(path: &Path, rows: &[LedgerRow]) -> std::io::Result<()> {
    let mut text = String::new();
    for row in rows {
        let line = Line {
            ts_ms: row.ts_ms,
            request_id: row.request_id.clone(),
            client: row.client.to_string(),
            method: row.method.clone(),
            route: row.route.to_string(),
            account: row.account.clone(),
            status: row.status,
            credits_used: row.credits_used,
            balance: row.balance,
            cached: row.cached,
            duration_ms: row.duration_ms,
            outcome: row.outcome.as_str().to_owned(),
        };
        text.push_str(&serde_json::to_string(&line).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    // The file's name is durable once its folder is synced (a new file's entry otherwise may
    // not survive a power cut).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Imported {
    /// Rows added to the ledger.
    pub added: usize,
    /// Rows already there (an earlier import committed them).
    pub present: usize,
    /// Lines that could not be read.
    pub unreadable: usize,
}

/// Writes the rows of the spool at `path` (if there is one) into the ledger in one transaction,
/// then removes the file. On an error the file stays, for the next start.
pub(crate) fn import(conn: &mut Connection, path: &Path) -> Result<Option<Imported>, String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let mut imported = Imported::default();
    let tx = conn
        .transaction()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO requests (ts_ms, request_id, client, method, route, account, status,
                                       credits_used, balance, cached, duration_ms, outcome)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12
                 WHERE NOT EXISTS (SELECT 1 FROM requests WHERE ts_ms = ?1 AND request_id = ?2)",
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let Some(row) = serde_json::from_str::<Line>(&line)
                .ok()
                .and_then(|line| line.into_row())
            else {
                imported.unreadable += 1;
                continue;
            };
            let added = insert
                .execute(params![
                    row.ts_ms,
                    row.request_id,
                    &*row.client,
                    row.method,
                    &*row.route,
                    row.account,
                    row.status,
                    row.credits_used.map(to_i64),
                    row.balance.map(to_i64),
                    row.cached,
                    to_i64(row.duration_ms),
                    row.outcome.as_str(),
                ])
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if added == 0 {
                imported.present += 1;
            } else {
                imported.added += 1;
            }
        }
    }
    tx.commit()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(imported))
}

impl Line {
    fn into_row(self) -> Option<LedgerRow> {
        Some(LedgerRow {
            ts_ms: self.ts_ms,
            request_id: self.request_id,
            client: Arc::from(self.client),
            method: self.method,
            route: Arc::from(self.route),
            account: self.account,
            status: self.status,
            credits_used: self.credits_used,
            balance: self.balance,
            cached: self.cached,
            duration_ms: self.duration_ms,
            outcome: self.outcome.parse::<Outcome>().ok()?,
        })
    }
}

/// As the writer stores integers: a value past `i64::MAX` is saturated rather than wrapped.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
