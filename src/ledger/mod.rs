//! The credit ledger (SPEC §7): one row per forwarded call in an embedded SQLite file, written
//! off the request path, and the usage reports read from it (SPEC §3 `usage`, admin `/usage`).
//!
//! Shape: [`Ledger`] is a cheap handle. [`Ledger::record`] only pushes the row into a bounded
//! channel (never blocks, never awaits); one writer on its own std thread (SQLite is blocking)
//! commits the rows in batches (every 250 ms or 1 000 rows), keeps them in memory and retries
//! while the file cannot be written ([`Ledger::health`] says why), folds old rows into daily
//! roll-ups, and flushes everything on [`Ledger::close`].
//!
//! - `schema`: opening the file, the versioned schema, the retention fold.
//! - `writer`: the writer thread.
//! - `spool`: where `close` keeps the rows it could not commit, imported at the next open.
//! - `usage`: `parse_since`, the reports and their rendering, `spent_since`.

mod schema;
mod spool;
mod usage;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::LedgerConfig;

pub use usage::{
    parse_since, spent_since, usage, Format, GroupBy, UsageCounts, UsageReport, UsageRow,
};

/// One forwarded call, as the meter saw it when the response body ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    /// When the call was made: unix milliseconds, UTC. Reports and retention go by it.
    pub ts_ms: i64,
    /// The `x-request-id`, to find the call in the logs.
    pub request_id: String,
    /// The gateway client (config name) that made the call: who spent the credits.
    pub client: Arc<str>,
    pub method: String,
    /// Route template, e.g. `PUT /api/fansly/{account}/tracking-links/{id}`: groups calls by
    /// what they do, not by ids.
    pub route: Arc<str>,
    /// The OnlyFans / Fansly account the call was about; `None` for team routes (`/api/whoami`).
    pub account: Option<String>,
    /// The status sent to the client; `>= 400` counts as an error in reports.
    pub status: u16,
    /// Credits the upstream charged; `None` when it did not say (no `_meta`, no header): reports
    /// count such calls apart instead of guessing 0.
    pub credits_used: Option<u64>,
    /// The team's balance the upstream reported after the call, if it did.
    pub balance: Option<u64>,
    /// Whether the upstream answered from its cache (0 credits); `None` when it did not say.
    pub cached: Option<bool>,
    /// Time from request received to response body ended.
    pub duration_ms: u64,
    pub outcome: Outcome,
}

/// How the response body ended; stored as text (`complete`, `cut`, `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The whole body was delivered.
    Complete,
    /// The body ended early: the client went away or the upstream reset the stream. The
    /// credits were still spent if the upstream said so. Also a call whose client hung up
    /// before the answer came: the gateway finished it anyway, `status` is the upstream's.
    Cut,
    /// No upstream response was delivered (gateway error, upstream failure).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Cut => "cut",
            Self::Error => "error",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "complete" => Ok(Self::Complete),
            "cut" => Ok(Self::Cut),
            "error" => Ok(Self::Error),
            other => Err(format!("unknown ledger outcome {other:?}")),
        }
    }
}

/// Whether the writer can write; `/readyz` answers 503 with the reason while `Failing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerHealth {
    Healthy,
    /// The last write failed; rows wait in memory and the writer retries with backoff.
    Failing {
        reason: String,
    },
}

#[derive(Debug)]
pub enum LedgerError {
    /// A folder or file operation on `path` failed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite refused an operation on the ledger at `path`.
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file is not a ledger this build can use.
    Schema { path: PathBuf, reason: String },
    /// A report was asked of a ledger file that does not exist.
    Missing { path: PathBuf },
    /// The writer could not start.
    Spawn(std::io::Error),
    /// The ledger was closed; nothing more is written.
    Closed,
    /// `close` gave up on rows it could not write (the file stayed unwritable).
    Unwritten { rows: usize, reason: String },
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "ledger {}: {source}", path.display()),
            Self::Sqlite { path, source } => write!(f, "ledger {}: {source}", path.display()),
            Self::Schema { path, reason } => write!(f, "ledger {}: {reason}", path.display()),
            Self::Missing { path } => write!(
                f,
                "no ledger at {}: the gateway creates it on its first start (check [ledger] path)",
                path.display()
            ),
            Self::Spawn(e) => write!(f, "could not start the ledger writer: {e}"),
            Self::Closed => f.write_str("the ledger is closed"),
            Self::Unwritten { rows, reason } => {
                write!(f, "{rows} ledger rows could not be written: {reason}")
            }
        }
    }
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } | Self::Spawn(source) => Some(source),
            Self::Sqlite { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Knobs of the writer; the defaults are the product's, tests shrink them.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// Rows that may wait between `record` and the writer; beyond it `record` drops.
    pub channel_capacity: usize,
    /// Commit when this many rows wait...
    pub batch_rows: usize,
    /// ...or when the oldest waiting row is this old.
    pub batch_interval: Duration,
    /// Rows held in memory while the file cannot be written; beyond it new rows are dropped.
    pub max_pending: usize,
    /// First retry delay after a failed write; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long `close` keeps retrying an unwritable file before giving up.
    pub close_deadline: Duration,
    /// How often old rows are folded into roll-ups while running.
    pub fold_every: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            channel_capacity: 65_536,
            batch_rows: 1_000,
            batch_interval: Duration::from_millis(250),
            max_pending: 100_000,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            close_deadline: Duration::from_secs(5),
            fold_every: Duration::from_secs(3600),
        }
    }
}

/// What travels to the writer. Rows are boxed so the channel's preallocated slots stay small.
pub(crate) enum Msg {
    Row(Box<LedgerRow>),
    /// Answer once every row sent before this message is committed.
    Flush(oneshot::Sender<Result<(), LedgerError>>),
    /// Commit everything, stop, answer.
    Close(oneshot::Sender<Result<(), LedgerError>>),
}

/// State shared by the handles and the writer.
pub(crate) struct Shared {
    /// Rows lost: channel full, writer stopped, or memory bound reached while failing.
    pub dropped: AtomicU64,
    pub health: Mutex<LedgerHealth>,
    /// Milliseconds since `started` of the last "dropping rows" WARN from `record`, or
    /// `NEVER`: one WARN per `DROP_WARN_EVERY`, not one per row.
    last_drop_warn: AtomicU64,
    started: Instant,
    /// Rows sent since the writer last drained the channel. The writer drains on a timer rather
    /// than waking for every row (a wake-up per request cost more than the rest of the ledger);
    /// `record` wakes it only when a whole batch is waiting.
    pub queued: std::sync::atomic::AtomicUsize,
    /// Test hook: every write fails while set.
    #[cfg(test)]
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// Test hook: the writer takes nothing from the channel while set.
    #[cfg(test)]
    pub paused: std::sync::atomic::AtomicBool,
}

const NEVER: u64 = u64::MAX;
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

impl Shared {
    pub(crate) fn set_health(&self, health: LedgerHealth) {
        if let Ok(mut h) = self.health.lock() {
            *h = health;
        }
    }
}

/// Handle to the ledger; clone it freely (one `Arc`).
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    path: PathBuf,
    /// The writer thread, to wake it for flush, close, or a full batch.
    writer: std::thread::Thread,
    batch_rows: usize,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.inner.path)
            .field("health", &self.health())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Ledger {
    /// Opens (creating folder and file if missing) and migrates the ledger, folds rows older
    /// than the retention, and starts the writer thread.
    pub fn open(config: &LedgerConfig) -> Result<Ledger, LedgerError> {
        Self::open_tuned(config, Tuning::default())
    }

    pub(crate) fn open_tuned(config: &LedgerConfig, tuning: Tuning) -> Result<Ledger, LedgerError> {
        let path = config.path.clone();
        let mut conn = schema::open_writable(&path)?;
        let horizon = schema::fold_horizon(now_ms(), config.retention);
        let folded = schema::fold(&mut conn, horizon).map_err(|source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        })?;
        if folded > 0 {
            tracing::info!(rows = folded, "ledger: folded old rows into daily roll-ups");
        }
        import_spool(&mut conn, &path);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            health: Mutex::new(LedgerHealth::Healthy),
            last_drop_warn: AtomicU64::new(NEVER),
            started: Instant::now(),
            queued: Default::default(),
            #[cfg(test)]
            fail_writes: Default::default(),
            #[cfg(test)]
            paused: Default::default(),
        });
        let (tx, rx) = sync_channel(tuning.channel_capacity);
        let batch_rows = tuning.batch_rows;
        let writer = writer::Writer::new(
            path.clone(),
            conn,
            config.retention,
            tuning,
            Arc::clone(&shared),
        );
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(LedgerError::Spawn)?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                tx,
                shared,
                path,
                writer: thread.thread().clone(),
                batch_rows,
            }),
        })
    }

    /// Queues a row for the writer. Never blocks: if the channel is full (the writer cannot
    /// keep up) or the ledger is closed, the row is dropped and counted in [`Ledger::dropped`].
    pub fn record(&self, row: LedgerRow) {
        match self.inner.tx.try_send(Msg::Row(Box::new(row))) {
            Ok(()) => {
                let queued = self.inner.shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
                if queued == self.inner.batch_rows {
                    self.inner.writer.unpark();
                }
            }
            Err(TrySendError::Full(_)) => self.count_drop("the ledger writer is behind"),
            Err(TrySendError::Disconnected(_)) => self.count_drop("the ledger is closed"),
        }
    }

    fn count_drop(&self, why: &'static str) {
        let shared = &self.inner.shared;
        let total = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = shared.last_drop_warn.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= DROP_WARN_EVERY.as_millis() as u64;
        if due
            && shared
                .last_drop_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(dropped_total = total, "ledger: dropping rows: {why}");
        }
    }

    /// Rows lost so far (channel full, closed, or the in-memory bound hit while failing).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether the last write succeeded; `Failing` carries the reason for `/readyz`.
    pub fn health(&self) -> LedgerHealth {
        match self.inner.shared.health.lock() {
            Ok(h) => h.clone(),
            Err(_) => LedgerHealth::Failing {
                reason: "ledger writer panicked".into(),
            },
        }
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Waits until every row recorded before this call is committed. While the file cannot be
    /// written this waits for recovery: bound it with a timeout if you must.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        self.ask(Msg::Flush).await
    }

    /// Commits every row recorded so far and stops the writer. When it returns `Ok`, every
    /// recorded row is on disk: in the ledger, or, if the file stayed unwritable for a few
    /// seconds of retries, in the spool next to it ([`spool_path`]), which the next open writes
    /// into the ledger. If the spool cannot be written either it gives up with
    /// [`LedgerError::Unwritten`], saying how many rows are lost. Later `record`s are dropped
    /// and counted; closing again is a no-op.
    pub async fn close(&self) -> Result<(), LedgerError> {
        match self.ask(Msg::Close).await {
            Err(LedgerError::Closed) => Ok(()),
            other => other,
        }
    }

    async fn ask(
        &self,
        msg: fn(oneshot::Sender<Result<(), LedgerError>>) -> Msg,
    ) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        let mut msg = msg(reply);
        // The control message rides the rows' channel so it arrives after every row before it;
        // when the channel is full, wait for room without blocking the runtime.
        loop {
            match self.inner.tx.try_send(msg) {
                Ok(()) => {
                    self.inner.writer.unpark();
                    break;
                }
                Err(TrySendError::Full(back)) => {
                    self.inner.writer.unpark();
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(LedgerError::Closed),
            }
        }
        answer.await.unwrap_or(Err(LedgerError::Closed))
    }

    /// Credits per client since `since_ms`, from the file (raw rows, plus roll-ups of whole
    /// days from `since_ms` on), to restore budgets at start. Rows not yet committed are not
    /// counted: call it before traffic, or after [`Ledger::flush`].
    pub fn spent_since(&self, since_ms: i64) -> Result<HashMap<String, u64>, LedgerError> {
        usage::spent_since(&self.inner.path, since_ms)
    }
}

/// Writes the rows the last stop kept in the spool (see `spool`) into the ledger. A spool that
/// cannot be imported stays for the next start: it does not keep the gateway from starting.
fn import_spool(conn: &mut rusqlite::Connection, ledger: &Path) {
    let path = spool::path_for(ledger);
    match spool::import(conn, &path) {
        Ok(None) => {}
        Ok(Some(imported)) => {
            tracing::info!(
                rows = imported.added,
                already_present = imported.present,
                spool = %path.display(),
                "ledger: rows kept in the spool at the last stop are in the ledger now"
            );
            if imported.unreadable > 0 {
                tracing::warn!(
                    lines = imported.unreadable,
                    spool = %path.display(),
                    "ledger: spool lines that could not be read were skipped"
                );
            }
        }
        Err(reason) => tracing::warn!(
            %reason,
            "ledger: could not import the spool of rows kept at the last stop; it stays for \
             the next start"
        ),
    }
}

/// The spool of the ledger at `ledger`: where `close` keeps the rows it could not commit.
pub fn spool_path(ledger: &Path) -> PathBuf {
    spool::path_for(ledger)
}

pub(crate) use crate::calendar::now_ms;
