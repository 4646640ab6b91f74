//! The ledger's one writer: a std thread (SQLite is blocking) that drains the rows' channel and
//! commits them in batches, so the request path only ever pays for a channel push.
//!
//! Invariants:
//! - Rows are committed in the order they were recorded; `Flush`/`Close` ride the same channel,
//!   so when one arrives every row recorded before it is in `pending` or already committed.
//! - A batch is committed whole or not at all; a failed batch stays in `pending` (up to
//!   `max_pending`) and is retried with backoff, reopening the file, until it succeeds.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params_from_iter, Connection};
use tokio::sync::oneshot;

use super::{now_ms, schema, spool, LedgerError, LedgerHealth, LedgerRow, Msg, Shared, Tuning};

type Reply = oneshot::Sender<Result<(), LedgerError>>;

pub(crate) struct Writer {
    path: PathBuf,
    /// `None` after a failure: the next attempt reopens the file (it may have been replaced).
    conn: Option<Connection>,
    /// Device and inode of the file `conn` writes to, to notice the file removed or replaced
    /// (an open connection would otherwise keep writing into an unlinked inode, lost at exit).
    identity: Option<(u64, u64)>,
    retention: Duration,
    tuning: Tuning,
    shared: Arc<Shared>,
    /// Rows received and not yet committed, oldest first.
    pending: Vec<LedgerRow>,
    /// When the oldest pending row arrived: the batch is due `batch_interval` after it.
    oldest: Option<Instant>,
    /// Flushes waiting for `pending` to be committed.
    waiters: Vec<Reply>,
    /// A flush arrived: commit now rather than at the batch deadline.
    force: bool,
    /// `Some` while failing: no attempt before this moment.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The reason last logged, so a failure that repeats is logged once, not per retry.
    last_reason: Option<String>,
    next_fold: Instant,
    /// Last WARN about rows dropped at the memory bound (rate-limited).
    last_drop_warn: Option<Instant>,
}

impl Writer {
    pub(crate) fn new(
        path: PathBuf,
        conn: Connection,
        retention: Duration,
        tuning: Tuning,
        shared: Arc<Shared>,
    ) -> Self {
        let identity = file_identity(&path);
        Self {
            next_fold: Instant::now() + tuning.fold_every,
            backoff: tuning.min_backoff,
            path,
            conn: Some(conn),
            identity,
            retention,
            tuning,
            shared,
            pending: Vec::new(),
            oldest: None,
            waiters: Vec::new(),
            force: false,
            retry_at: None,
            last_reason: None,
            last_drop_warn: None,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            #[cfg(test)]
            if self.shared.paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // Take everything waiting, then sleep until something is due. `record` does not wake
            // this thread for each row: it drains at least every `batch_interval`, and is woken
            // early for a flush, a close, or a whole batch.
            self.shared.queued.store(0, Ordering::Relaxed);
            loop {
                match rx.try_recv() {
                    Ok(Msg::Row(row)) => self.push(*row),
                    Ok(Msg::Flush(reply)) => {
                        self.waiters.push(reply);
                        self.force = true;
                    }
                    Ok(Msg::Close(reply)) => return self.finish(rx, Some(reply)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.finish(rx, None),
                }
            }
            self.tick();
            let timeout = self
                .next_wake()
                .saturating_duration_since(Instant::now())
                .min(self.tuning.batch_interval);
            if !timeout.is_zero() {
                std::thread::park_timeout(timeout);
            }
        }
    }

    /// The next moment something is due: a batch, a retry, or the fold.
    fn next_wake(&self) -> Instant {
        let batch = match (self.retry_at, self.oldest) {
            (Some(retry), _) => Some(retry),
            (None, Some(_)) if self.force => Some(Instant::now()),
            (None, Some(oldest)) => Some(oldest + self.tuning.batch_interval),
            (None, None) => None,
        };
        batch.map_or(self.next_fold, |b| b.min(self.next_fold))
    }

    fn push(&mut self, row: LedgerRow) {
        if self.pending.len() >= self.tuning.max_pending {
            let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let due = self
                .last_drop_warn
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if due {
                self.last_drop_warn = Some(Instant::now());
                tracing::warn!(
                    dropped_total = total,
                    held = self.pending.len(),
                    "ledger: dropping rows: the file is unwritable and the in-memory bound is reached"
                );
            }
            return;
        }
        if self.pending.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.pending.push(row);
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if self.pending.is_empty() {
            self.answer_waiters();
        } else {
            let due = match self.retry_at {
                Some(retry) => now >= retry,
                None => {
                    self.force
                        || self.pending.len() >= self.tuning.batch_rows
                        || self
                            .oldest
                            .is_some_and(|t| now >= t + self.tuning.batch_interval)
                }
            };
            if due {
                self.write();
            }
        }
        if now >= self.next_fold {
            self.next_fold = now + self.tuning.fold_every;
            self.fold();
        }
    }

    fn answer_waiters(&mut self) {
        self.force = false;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
    }

    /// One attempt at committing all of `pending`; on failure, schedules the retry.
    fn write(&mut self) {
        match self.try_write() {
            Ok(()) => {
                let rows = self.pending.len();
                self.pending.clear();
                self.oldest = None;
                if self.retry_at.take().is_some() {
                    tracing::info!(rows, "ledger: writable again, waiting rows written");
                }
                self.backoff = self.tuning.min_backoff;
                self.last_reason = None;
                self.shared.set_health(LedgerHealth::Healthy);
                self.answer_waiters();
            }
            Err(reason) => {
                if self.last_reason.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        held = self.pending.len(),
                        %reason,
                        "ledger: write failed; rows kept in memory, retrying"
                    );
                    self.last_reason = Some(reason.clone());
                }
                self.shared.set_health(LedgerHealth::Failing { reason });
                self.conn = None;
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.tuning.max_backoff);
            }
        }
    }

    fn try_write(&mut self) -> Result<(), String> {
        #[cfg(test)]
        if self.shared.fail_writes.load(Ordering::SeqCst) {
            return Err("injected failure (test hook)".into());
        }
        if self.conn.is_some() && file_identity(&self.path) != self.identity {
            tracing::warn!(
                path = %self.path.display(),
                "ledger: the file was removed or replaced; opening a new one"
            );
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let conn = schema::open_writable(&self.path).map_err(|e| e.to_string())?;
                self.identity = file_identity(&self.path);
                self.conn.insert(conn)
            }
        };
        insert(conn, &self.pending).map_err(|e| format!("ledger {}: {e}", self.path.display()))
    }

    fn fold(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let horizon = schema::fold_horizon(now_ms(), self.retention);
        match schema::fold(conn, horizon) {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "ledger: folded old rows into daily roll-ups"),
            Err(e) => tracing::warn!(error = %e, "ledger: retention fold failed; retrying later"),
        }
    }

    /// Commits what is left (retrying an unwritable file up to `close_deadline`, then appending
    /// what is still left to the spool), counts rows that arrived behind the close as dropped
    /// and rows that neither file took as lost, closes the channel and the file, then answers:
    /// once `close` returns, a `record` finds the channel closed and counts its row as dropped.
    fn finish(mut self, rx: Receiver<Msg>, reply: Option<Reply>) {
        let deadline = Instant::now() + self.tuning.close_deadline;
        while !self.pending.is_empty() {
            self.write();
            let now = Instant::now();
            if self.pending.is_empty() || now >= deadline {
                break;
            }
            std::thread::sleep(self.backoff.min(deadline - now));
        }
        let mut late = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Row(_) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Flush(r) | Msg::Close(r) => late.push(r),
            }
        }
        drop(rx);
        let mut reason = self.last_reason.clone().unwrap_or_default();
        if !self.pending.is_empty() {
            let spool = spool::path_for(&self.path);
            match spool::write(&spool, &self.pending) {
                Ok(()) => {
                    tracing::warn!(
                        rows = self.pending.len(),
                        %reason,
                        spool = %spool.display(),
                        "ledger: closing with rows the file would not take; they are kept in \
                         the spool and written into the ledger at the next start"
                    );
                    self.pending.clear();
                }
                Err(error) => {
                    reason = format!("{reason}; the spool {} too: {error}", spool.display());
                }
            }
        }
        let lost = self.pending.len();
        if lost > 0 {
            self.shared
                .dropped
                .fetch_add(lost as u64, Ordering::Relaxed);
            tracing::error!(rows = lost, %reason, "ledger: closing with rows that could not be written");
        }
        drop(self.conn.take());
        let result = || {
            if lost == 0 {
                Ok(())
            } else {
                Err(LedgerError::Unwritten {
                    rows: lost,
                    reason: reason.clone(),
                })
            }
        };
        for waiter in self.waiters.drain(..).chain(reply) {
            let _ = waiter.send(result());
        }
        for r in late {
            let _ = r.send(Err(LedgerError::Closed));
        }
    }
}

/// Commits `rows` in one transaction: whole groups of [`schema::ROWS_PER_INSERT`] with one
/// multi-row statement each (a statement's bind, step and reset cost about as much as the row it
/// inserts), the rest one by one.
fn insert(conn: &mut Connection, rows: &[LedgerRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut groups = rows.chunks_exact(schema::ROWS_PER_INSERT);
        if groups.len() > 0 {
            let mut many = tx.prepare_cached(&schema::INSERT_ROWS)?;
            for group in groups.by_ref() {
                many.execute(params_from_iter(group.iter().flat_map(values)))?;
            }
        }
        let mut one = tx.prepare_cached(schema::INSERT_ROW)?;
        for row in groups.remainder() {
            one.execute(params_from_iter(values(row)))?;
        }
    }
    tx.commit()
}

/// A row's values, in the order of [`schema::INSERT_ROW`]'s columns (its text borrowed).
fn values(row: &LedgerRow) -> [ToSqlOutput<'_>; 12] {
    fn text(s: &str) -> ToSqlOutput<'_> {
        ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
    }
    let integer = |v: i64| ToSqlOutput::Owned(Value::Integer(v));
    let null = || ToSqlOutput::Owned(Value::Null);
    [
        integer(row.ts_ms),
        text(&row.request_id),
        text(&row.client),
        text(&row.method),
        text(&row.route),
        row.account.as_deref().map_or_else(null, text),
        integer(i64::from(row.status)),
        row.credits_used.map_or_else(null, |v| integer(to_i64(v))),
        row.balance.map_or_else(null, |v| integer(to_i64(v))),
        row.cached.map_or_else(null, |v| integer(i64::from(v))),
        integer(to_i64(row.duration_ms)),
        text(row.outcome.as_str()),
    ]
}

/// SQLite integers are signed; a value past `i64::MAX` is saturated rather than wrapped.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(unix)]
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}
