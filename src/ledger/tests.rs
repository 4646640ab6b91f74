//! Tests of the ledger against real files in temporary folders: durability, batching,
//! back-pressure, failure and recovery, migrations, retention, reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::*;

const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z
const NOV_1: i64 = 1_793_491_200_000;

fn config(path: &Path, retention: Duration) -> LedgerConfig {
    LedgerConfig {
        path: path.to_path_buf(),
        retention,
    }
}

fn long_retention(path: &Path) -> LedgerConfig {
    config(path, Duration::from_secs(3650 * 86_400))
}

fn row(ts_ms: i64, n: usize) -> LedgerRow {
    LedgerRow {
        ts_ms,
        request_id: format!("req-{n}"),
        client: "crm-app".into(),
        method: "PUT".into(),
        route: "PUT /api/fansly/{account}/tracking-links/{id}".into(),
        account: Some("fansly_acct_123".into()),
        status: 200,
        credits_used: Some(1),
        balance: Some(99_000),
        cached: Some(false),
        duration_ms: 42,
        outcome: Outcome::Complete,
    }
}

/// Every raw row in the file, in insertion order, read with a connection of its own.
fn read_rows(path: &Path) -> Vec<LedgerRow> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT ts_ms, request_id, client, method, route, account, status, credits_used,
                    balance, cached, duration_ms, outcome FROM requests ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(LedgerRow {
            ts_ms: r.get(0)?,
            request_id: r.get(1)?,
            client: r.get(2)?,
            method: r.get(3)?,
            route: r.get(4)?,
            account: r.get(5)?,
            status: r.get(6)?,
            credits_used: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            balance: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            cached: r.get(9)?,
            duration_ms: r.get::<_, i64>(10)? as u64,
            outcome: r.get::<_, String>(11)?.parse().unwrap(),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn count(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .unwrap()
}

/// The file's tables and indexes, by name.
fn schema_objects(path: &Path) -> Vec<String> {
    Connection::open(path)
        .unwrap()
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Polls `check` until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn ledger_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("ledger.sqlite")
}

#[tokio::test]
async fn rows_survive_close_and_reopen_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    assert!(path.exists(), "folder and file are created");
    let mut rows = vec![row(NOV_1 + 1, 1), row(NOV_1 + 2, 2), row(NOV_1 + 3, 3)];
    rows[1].account = None;
    rows[1].credits_used = None;
    rows[1].balance = None;
    rows[1].cached = None;
    rows[1].status = 502;
    rows[1].outcome = Outcome::Error;
    rows[2].cached = Some(true);
    rows[2].credits_used = Some(0);
    rows[2].outcome = Outcome::Cut;
    rows[2].credits_used = Some(u64::MAX >> 1);
    for r in &rows {
        ledger.record(r.clone());
    }
    ledger.close().await.unwrap();
    assert_eq!(read_rows(&path), rows);

    let reopened = Ledger::open(&long_retention(&path)).unwrap();
    reopened.record(row(NOV_1 + 4, 4));
    reopened.close().await.unwrap();
    let all = read_rows(&path);
    assert_eq!(all.len(), 4);
    assert_eq!(all[..3], rows[..]);
    assert_eq!(reopened.dropped(), 0);
}

#[tokio::test]
async fn a_batch_of_whole_insert_groups_and_a_remainder_lands_exactly_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    // Two multi-row statements' worth and a remainder, every row different.
    let rows: Vec<LedgerRow> = (0..2 * schema::ROWS_PER_INSERT + 11)
        .map(|n| {
            let mut r = row(NOV_1 + n as i64, n);
            r.status = 200 + n as u16;
            r.duration_ms = n as u64;
            if n % 3 == 0 {
                r.account = None;
                r.credits_used = None;
                r.cached = None;
            }
            if n % 5 == 0 {
                r.balance = None;
                r.outcome = Outcome::Cut;
            }
            r
        })
        .collect();
    for r in &rows {
        ledger.record(r.clone());
    }
    ledger.close().await.unwrap();
    assert_eq!(read_rows(&path), rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_rows_recorded_from_many_tasks_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..1_250 {
                    ledger.record(row(NOV_1 + i, t * 1_250 + i as usize));
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    ledger.close().await.unwrap();
    assert_eq!(ledger.dropped(), 0);
    let rows = read_rows(&path);
    assert_eq!(rows.len(), 10_000);
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids.len(), 10_000, "each row exactly once");
}

#[tokio::test]
async fn rows_reach_the_file_within_a_second_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let started = Instant::now();
    for i in 0..10 {
        ledger.record(row(NOV_1, i));
    }
    // Fewer rows than a batch: the 250 ms deadline commits them.
    assert!(eventually(Duration::from_secs(1), || count(&path) == 10).await);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "batched, not per row"
    );
    // A full batch commits at once, well before the deadline.
    let started = Instant::now();
    for i in 0..1_000 {
        ledger.record(row(NOV_1, 10 + i));
    }
    assert!(eventually(Duration::from_secs(1), || count(&path) == 1_010).await);
    assert!(started.elapsed() < Duration::from_millis(1_000));
    // flush() waits for exactly what was recorded before it.
    ledger.record(row(NOV_1, 2_000));
    ledger.flush().await.unwrap();
    assert_eq!(count(&path), 1_011);
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let tuning = Tuning {
        channel_capacity: 4,
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning).unwrap();
    ledger.inner.shared.paused.store(true, Ordering::SeqCst);
    // The writer may have been waiting in recv already and take one row before pausing.
    let started = Instant::now();
    for i in 0..100 {
        ledger.record(row(NOV_1, i));
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "record never blocks"
    );
    let dropped = ledger.dropped();
    assert!((95..=96).contains(&dropped), "dropped {dropped}");
    ledger.inner.shared.paused.store(false, Ordering::SeqCst);
    ledger.close().await.unwrap();
    assert_eq!(
        count(&path) as u64 + dropped,
        100,
        "every row landed or was counted"
    );
}

#[tokio::test]
async fn a_failing_file_reports_why_keeps_rows_and_recovers_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let tuning = Tuning {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning).unwrap();
    for i in 0..10 {
        ledger.record(row(NOV_1, i));
    }
    ledger.flush().await.unwrap();
    assert_eq!(ledger.health(), LedgerHealth::Healthy);

    ledger
        .inner
        .shared
        .fail_writes
        .store(true, Ordering::SeqCst);
    for i in 10..30 {
        ledger.record(row(NOV_1, i));
    }
    assert!(
        eventually(Duration::from_secs(2), || ledger.health()
            != LedgerHealth::Healthy)
        .await,
        "health turns Failing"
    );
    let LedgerHealth::Failing { reason } = ledger.health() else {
        unreachable!()
    };
    assert!(reason.contains("injected failure"), "{reason}");
    // A flush waits for the file to come back rather than pretend.
    let pending = tokio::time::timeout(Duration::from_millis(200), ledger.flush()).await;
    assert!(pending.is_err(), "flush does not return while failing");
    assert_eq!(count(&path), 10);

    ledger
        .inner
        .shared
        .fail_writes
        .store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(2), ledger.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger.health(), LedgerHealth::Healthy);
    assert_eq!(count(&path), 30);
    assert_eq!(ledger.dropped(), 0);
    ledger.close().await.unwrap();
    let ids: Vec<_> = read_rows(&path).into_iter().map(|r| r.request_id).collect();
    let expected: Vec<_> = (0..30).map(|i| format!("req-{i}")).collect();
    assert_eq!(ids, expected, "in order, each once");
}

#[tokio::test]
async fn a_replaced_folder_is_noticed_and_writing_resumes_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let folder = path.parent().unwrap().to_path_buf();
    let tuning = Tuning {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning).unwrap();
    for i in 0..5 {
        ledger.record(row(NOV_1, i));
    }
    ledger.flush().await.unwrap();

    // Move the folder away and put a plain file in its place: the ledger cannot be created.
    let moved = dir.path().join("moved");
    std::fs::rename(&folder, &moved).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();
    for i in 5..12 {
        ledger.record(row(NOV_1, i));
    }
    assert!(
        eventually(Duration::from_secs(2), || ledger.health()
            != LedgerHealth::Healthy)
        .await,
        "health turns Failing"
    );
    let LedgerHealth::Failing { reason } = ledger.health() else {
        unreachable!()
    };
    assert!(reason.contains(&*folder.to_string_lossy()), "{reason}");

    std::fs::remove_file(&folder).unwrap();
    tokio::time::timeout(Duration::from_secs(2), ledger.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger.health(), LedgerHealth::Healthy);
    ledger.close().await.unwrap();
    assert_eq!(
        count(&moved.join("ledger.sqlite")),
        5,
        "old rows stay in the moved file"
    );
    assert_eq!(
        count(&path),
        7,
        "rows recorded meanwhile are in the new file"
    );
}

#[tokio::test]
async fn rows_beyond_the_memory_bound_are_dropped_and_counted_while_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let tuning = Tuning {
        max_pending: 5,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning).unwrap();
    ledger
        .inner
        .shared
        .fail_writes
        .store(true, Ordering::SeqCst);
    for i in 0..12 {
        ledger.record(row(NOV_1, i));
    }
    assert!(eventually(Duration::from_secs(2), || ledger.dropped() == 7).await);
    ledger
        .inner
        .shared
        .fail_writes
        .store(false, Ordering::SeqCst);
    ledger.close().await.unwrap();
    assert_eq!(count(&path), 5, "the first rows are kept");
}

#[tokio::test]
async fn close_gives_up_on_a_file_that_stays_unwritable_and_says_how_many_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    // The spool cannot be written either (a folder stands in its place).
    std::fs::create_dir_all(spool_path(&path)).unwrap();
    let tuning = Tuning {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        close_deadline: Duration::from_millis(100),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning).unwrap();
    ledger
        .inner
        .shared
        .fail_writes
        .store(true, Ordering::SeqCst);
    for i in 0..3 {
        ledger.record(row(NOV_1, i));
    }
    match ledger.close().await {
        Err(LedgerError::Unwritten { rows: 3, reason }) => {
            assert!(reason.contains("injected"), "{reason}");
            assert!(reason.contains("the spool"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.dropped(), 3);
}

#[tokio::test]
async fn after_close_rows_are_dropped_and_counted_and_close_again_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let other = ledger.clone();
    ledger.record(row(NOV_1, 1));
    ledger.close().await.unwrap();
    other.record(row(NOV_1, 2));
    assert_eq!(other.dropped(), 1);
    other.close().await.unwrap();
    assert!(matches!(other.flush().await, Err(LedgerError::Closed)));
    assert_eq!(count(&path), 1);
}

#[tokio::test]
async fn a_version_1_file_is_upgraded_in_place_keeping_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    ledger.record(row(NOV_1, 1));
    ledger.close().await.unwrap();
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    ledger.record(row(NOV_1 + 1, 2));
    ledger.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'requests_client_ts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "the index version 2 drops");
    assert_eq!(count(&path), 2);
    let table: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'requests'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!table.contains(" IN ("), "version 3's check: {table}");
}

#[tokio::test]
async fn a_version_2_file_is_rebuilt_keeping_its_rows_ids_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(schema::MIGRATIONS[0]).unwrap();
        tx.execute_batch(schema::MIGRATIONS[1]).unwrap();
        for (ts, outcome) in [
            (NOV_1, "complete"),
            (NOV_1 + 5, "cut"),
            (NOV_1 + 9, "error"),
        ] {
            tx.execute(
                schema::INSERT_ROW,
                rusqlite::params![ts, "id", "c", "PUT", "r", "acct", 200, 7, 90, true, 3, outcome],
            )
            .unwrap();
        }
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.commit().unwrap();
    }
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    ledger.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let rows: Vec<(i64, i64, String, i64)> = conn
        .prepare("SELECT id, ts_ms, outcome, credits_used FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, NOV_1, "complete".to_owned(), 7),
            (2, NOV_1 + 5, "cut".to_owned(), 7),
            (3, NOV_1 + 9, "error".to_owned(), 7)
        ]
    );
    assert_eq!(schema_objects(&path), ["daily", "requests", "requests_ts"]);
}

#[tokio::test]
async fn a_row_insert_builds_no_temporary_table_and_still_checks_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    ledger.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    // Version 2's `CHECK (outcome IN (...))` made SQLite open an ephemeral b-tree (a page
    // cache, a zeroed page) for every row: half the cost of an insert.
    let opcodes: Vec<String> = conn
        .prepare(&format!("EXPLAIN {}", schema::INSERT_ROW))
        .unwrap()
        .query_map([rusqlite::types::Null; 12], |r| r.get(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(opcodes.iter().any(|op| op == "Insert"), "{opcodes:?}");
    assert!(
        !opcodes.iter().any(|op| op == "OpenEphemeral"),
        "{opcodes:?}"
    );
    let insert = |outcome: &str| {
        conn.execute(
            schema::INSERT_ROW,
            rusqlite::params![
                1,
                "id",
                "c",
                "PUT",
                "r",
                None::<String>,
                200,
                1,
                2,
                false,
                3,
                outcome
            ],
        )
    };
    insert("complete").unwrap();
    insert("cut").unwrap();
    insert("error").unwrap();
    let refused = insert("lost").unwrap_err().to_string();
    assert!(refused.contains("CHECK constraint failed"), "{refused}");
}

#[tokio::test]
async fn migrations_build_the_schema_on_an_empty_file_and_reopen_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap(); // an empty file is a valid empty SQLite database
    let version = |p: &Path| -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    let journal = |p: &Path| -> String {
        Connection::open(p)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    };
    for _ in 0..3 {
        let ledger = Ledger::open(&long_retention(&path)).unwrap();
        ledger.record(row(NOV_1, 1));
        ledger.close().await.unwrap();
        assert_eq!(version(&path), schema::SCHEMA_VERSION);
        assert_eq!(journal(&path), "wal");
    }
    assert_eq!(count(&path), 3);
    assert_eq!(schema_objects(&path), ["daily", "requests", "requests_ts"]);
}

#[tokio::test]
async fn a_ledger_from_a_newer_gateway_is_refused_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    Ledger::open(&long_retention(&path))
        .unwrap()
        .close()
        .await
        .unwrap();
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1)
        .unwrap();
    let err = Ledger::open(&long_retention(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer than this gateway understands"), "{err}");
    let err = usage(&path, 0, GroupBy::Client).unwrap_err().to_string();
    assert!(err.contains("newer than this gateway understands"), "{err}");
}

/// The small data set of the report tests: two days of two clients, and one row before.
fn report_rows() -> Vec<LedgerRow> {
    let put = "PUT /api/fansly/{account}/tracking-links/{id}";
    let list = "GET /api/fansly/{account}/tracking-links";
    let mk = |ts, id: &str, client: &str, route: &str, account: Option<&str>| LedgerRow {
        ts_ms: ts,
        request_id: id.into(),
        client: client.into(),
        method: route.split(' ').next().unwrap().into(),
        route: route.into(),
        account: account.map(Into::into),
        status: 200,
        credits_used: Some(0),
        balance: None,
        cached: Some(false),
        duration_ms: 10,
        outcome: Outcome::Complete,
    };
    let hour = 3_600_000;
    let mut before = mk(NOV_1 - hour, "r0", "crm-app", put, Some("fansly_acct_1"));
    before.credits_used = Some(100);
    let mut r1 = mk(
        NOV_1 + 10 * hour,
        "r1",
        "crm-app",
        put,
        Some("fansly_acct_1"),
    );
    r1.credits_used = Some(5);
    let mut r2 = mk(
        NOV_1 + 11 * hour,
        "r2",
        "crm-app",
        list,
        Some("fansly_acct_1"),
    );
    r2.cached = Some(true);
    let mut r3 = mk(
        NOV_1 + DAY + 9 * hour,
        "r3",
        "crm-app",
        "GET /api/whoami",
        None,
    );
    r3.credits_used = None;
    r3.cached = None;
    let mut r4 = mk(
        NOV_1 + DAY + 10 * hour,
        "r4",
        "reports",
        put,
        Some("fansly_acct_2"),
    );
    r4.status = 422;
    r4.credits_used = None;
    r4.cached = None;
    let mut r5 = mk(
        NOV_1 + DAY + 11 * hour,
        "r5",
        "reports",
        list,
        Some("fansly_acct_2"),
    );
    r5.credits_used = Some(12);
    r5.outcome = Outcome::Cut;
    vec![before, r1, r2, r3, r4, r5]
}

async fn report_ledger(dir: &tempfile::TempDir) -> PathBuf {
    let path = ledger_path(dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    for r in report_rows() {
        ledger.record(r);
    }
    ledger.close().await.unwrap();
    path
}

#[tokio::test]
async fn usage_by_client_in_the_three_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = report_ledger(&dir).await;
    let report = usage(&path, NOV_1, GroupBy::Client).unwrap();
    assert_eq!(
        report.render(Format::Table),
        "\
CLIENT   REQUESTS  CREDITS  CACHED  UNKNOWN_CREDITS  ERRORS
reports         2       12       0                1       1
crm-app         3        5       1                1       0
TOTAL           5       17       1                2       1
"
    );
    assert_eq!(
        report.render(Format::Csv),
        "client,requests,credits_used,cached_requests,unknown_credit_requests,errors\r\n\
         reports,2,12,0,1,1\r\n\
         crm-app,3,5,1,1,0\r\n"
    );
    let json: serde_json::Value = serde_json::from_str(&report.render(Format::Json)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "since": "2026-11-01T00:00:00Z",
            "by": "client",
            "rows": [
                {"key": "reports", "requests": 2, "credits_used": 12, "cached_requests": 0,
                 "unknown_credit_requests": 1, "errors": 1},
                {"key": "crm-app", "requests": 3, "credits_used": 5, "cached_requests": 1,
                 "unknown_credit_requests": 1, "errors": 0},
            ],
            "total": {"requests": 5, "credits_used": 17, "cached_requests": 1,
                      "unknown_credit_requests": 2, "errors": 1},
        })
    );
}

#[tokio::test]
async fn usage_by_account_route_and_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = report_ledger(&dir).await;
    let by_account = usage(&path, NOV_1, GroupBy::Account).unwrap();
    assert_eq!(
        by_account.render(Format::Table),
        "\
ACCOUNT        REQUESTS  CREDITS  CACHED  UNKNOWN_CREDITS  ERRORS
fansly_acct_2         2       12       0                1       1
fansly_acct_1         2        5       1                0       0
(none)                1        0       0                1       0
TOTAL                 5       17       1                2       1
"
    );
    let by_route = usage(&path, NOV_1, GroupBy::Route).unwrap();
    assert_eq!(
        by_route.render(Format::Csv),
        "route,requests,credits_used,cached_requests,unknown_credit_requests,errors\r\n\
         GET /api/fansly/{account}/tracking-links,2,12,1,0,0\r\n\
         PUT /api/fansly/{account}/tracking-links/{id},2,5,0,1,1\r\n\
         GET /api/whoami,1,0,0,1,0\r\n"
    );
    // By day: chronological, and from a date before the first row, everything.
    let by_day = usage(&path, NOV_1 - DAY, GroupBy::Day).unwrap();
    assert_eq!(
        by_day.render(Format::Table),
        "\
DAY         REQUESTS  CREDITS  CACHED  UNKNOWN_CREDITS  ERRORS
2026-10-31         1      100       0                0       0
2026-11-01         2        5       1                0       0
2026-11-02         3       12       0                2       1
TOTAL              6      117       1                2       1
"
    );
}

#[tokio::test]
async fn usage_of_an_empty_ledger_has_a_zero_total_and_of_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let err = usage(&path, 0, GroupBy::Client).unwrap_err().to_string();
    assert!(err.contains(&*path.to_string_lossy()), "{err}");
    assert!(err.starts_with("no ledger at "), "{err}");
    Ledger::open(&long_retention(&path))
        .unwrap()
        .close()
        .await
        .unwrap();
    let report = usage(&path, 0, GroupBy::Client).unwrap();
    assert_eq!(
        report.render(Format::Table),
        "CLIENT  REQUESTS  CREDITS  CACHED  UNKNOWN_CREDITS  ERRORS\n\
         TOTAL          0        0       0                0       0\n"
    );
}

#[tokio::test]
async fn usage_reads_while_a_gateway_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    for i in 0..50 {
        ledger.record(row(NOV_1, i));
    }
    ledger.flush().await.unwrap();
    let report = usage(&path, 0, GroupBy::Client).unwrap();
    assert_eq!(report.total.requests, 50);
    ledger.record(row(NOV_1, 50));
    ledger.flush().await.unwrap();
    assert_eq!(usage(&path, 0, GroupBy::Client).unwrap().total.requests, 51);
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn retention_folds_old_rows_into_roll_ups_and_reports_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let now = now_ms();
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let mut rows = Vec::new();
    for (i, age_days) in [200, 200, 150, 120, 95, 30, 1, 0].into_iter().enumerate() {
        let mut r = row(now - age_days * DAY - 1_000, i);
        r.client = if i % 2 == 0 { "crm-app" } else { "reports" }.into();
        r.account = (i % 3 != 0).then(|| format!("fansly_acct_{}", i % 3));
        r.credits_used = if i == 3 { None } else { Some(i as u64 * 10) };
        r.cached = Some(i == 4);
        r.status = if i == 2 { 500 } else { 200 };
        rows.push(r);
    }
    for r in &rows {
        ledger.record(r.clone());
    }
    ledger.close().await.unwrap();
    let all = [
        GroupBy::Client,
        GroupBy::Account,
        GroupBy::Route,
        GroupBy::Day,
    ];
    let before: Vec<_> = all.map(|by| usage(&path, 0, by).unwrap()).into();
    let spent_before = spent_since(&path, 0).unwrap();

    // Reopening with a 90-day retention folds the five old rows at open.
    let ledger = Ledger::open(&config(&path, Duration::from_secs(90 * 86_400))).unwrap();
    assert_eq!(count(&path), 3);
    let daily: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT SUM(requests) FROM daily", [], |r| r.get(0))
        .unwrap();
    assert_eq!(daily, 5);
    let after: Vec<_> = all.map(|by| usage(&path, 0, by).unwrap()).into();
    assert_eq!(after, before);
    assert_eq!(spent_since(&path, 0).unwrap(), spent_before);
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn the_writer_folds_old_rows_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let tuning = Tuning {
        fold_every: Duration::from_millis(50),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&config(&path, Duration::from_secs(86_400)), tuning).unwrap();
    ledger.record(row(now_ms() - 10 * DAY, 1));
    ledger.record(row(now_ms(), 2));
    ledger.flush().await.unwrap();
    assert!(eventually(Duration::from_secs(2), || count(&path) == 1).await);
    assert_eq!(usage(&path, 0, GroupBy::Client).unwrap().total.requests, 2);
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn spent_since_sums_raw_rows_and_whole_days_of_roll_ups_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = report_ledger(&dir).await;
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let spent = ledger.spent_since(NOV_1).unwrap();
    assert_eq!(spent.len(), 2);
    assert_eq!(spent["crm-app"], 5);
    assert_eq!(spent["reports"], 12);
    assert_eq!(ledger.spent_since(0).unwrap()["crm-app"], 105);
    assert_eq!(ledger.spent_since(NOV_1 + 2 * DAY).unwrap().len(), 0);
    ledger.close().await.unwrap();

    // Folded into roll-ups, the whole days still count, a day cut by `since` does not.
    let mut conn = Connection::open(&path).unwrap();
    schema::fold(&mut conn, NOV_1 + 2 * DAY).unwrap();
    drop(conn);
    assert_eq!(count(&path), 0);
    let spent = spent_since(&path, NOV_1).unwrap();
    assert_eq!((spent["crm-app"], spent["reports"]), (5, 12));
    let spent = spent_since(&path, NOV_1 + DAY).unwrap();
    assert_eq!(spent.get("crm-app"), Some(&0));
    assert_eq!(spent["reports"], 12);
    let spent = spent_since(&path, NOV_1 + 1).unwrap();
    assert_eq!(
        spent["reports"], 12,
        "2026-11-02 is whole after a moment of 11-01"
    );
    assert_eq!(
        spent.get("crm-app"),
        Some(&0),
        "11-01 is cut by since: left out"
    );
}

/// 2^53: the largest credit figure a report takes as real.
const MAX_REAL: u64 = 1 << 53;

#[tokio::test]
async fn reports_and_spent_since_take_a_figure_above_two_to_the_53_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    // `u64::MAX` is stored as `i64::MAX`: the row an older gateway wrote for an absurd `_meta`.
    for (n, client, credits) in [
        (1, "crm-app", Some(3)),
        (2, "crm-app", Some(u64::MAX)),
        (3, "crm-app", Some(MAX_REAL + 1)),
        (4, "crm-app", Some(MAX_REAL - 16)),
        (5, "reports", Some(7)),
        (6, "reports", Some(u64::MAX)),
    ] {
        let mut r = row(NOV_1 + n as i64, n);
        r.client = client.into();
        r.credits_used = credits;
        ledger.record(r);
    }
    ledger.close().await.unwrap();
    let stored: Vec<_> = read_rows(&path).iter().map(|r| r.credits_used).collect();
    assert_eq!(
        stored[1],
        Some(i64::MAX as u64),
        "as the older gateway wrote it"
    );

    let report = usage(&path, 0, GroupBy::Client).unwrap();
    let counts = |key: &str| {
        let row = report.rows.iter().find(|r| r.key == key).unwrap();
        (
            row.counts.requests,
            row.counts.credits_used,
            row.counts.unknown_credit_requests,
        )
    };
    // Sums stay below 2^53, where a float sum is exact.
    assert_eq!(counts("crm-app"), (4, MAX_REAL - 13, 2));
    assert_eq!(counts("reports"), (2, 7, 1));
    assert_eq!(
        (
            report.total.credits_used,
            report.total.unknown_credit_requests
        ),
        (MAX_REAL - 6, 3)
    );
    for format in [Format::Table, Format::Json, Format::Csv] {
        assert!(
            report.render(format).contains("9007199254740979"),
            "{format:?}"
        );
    }
    let spent = spent_since(&path, 0).unwrap();
    assert_eq!((spent["crm-app"], spent["reports"]), (MAX_REAL - 13, 7));
}

#[tokio::test]
async fn a_ledger_holding_absurd_figures_still_opens_and_folds_them_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let now = now_ms();
    let old = now - 200 * DAY;
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    for (n, credits) in [
        (1, Some(u64::MAX)),
        (2, Some(4)),
        (3, Some(u64::MAX)),
        (4, None),
    ] {
        let mut r = row(old + n as i64, n);
        r.credits_used = credits;
        ledger.record(r);
    }
    ledger.close().await.unwrap();
    // A roll-up an older gateway folded from such a row, on another day.
    let older_day = schema::day_of(old - 2 * DAY);
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO daily VALUES (?1, 'crm-app', 'fansly_acct_123',
                 'PUT /api/fansly/{account}/tracking-links/{id}', 2, ?2, 0, 0, 0)",
            rusqlite::params![older_day, i64::MAX],
        )
        .unwrap();
    let before = usage(&path, 0, GroupBy::Client).unwrap();
    assert_eq!(
        (
            before.total.requests,
            before.total.credits_used,
            before.total.unknown_credit_requests
        ),
        (6, 4, 5),
        "the roll-up of unknown cost counts both its calls as unknown"
    );

    // Opening with a 90-day retention folds the four rows (SUM would overflow).
    let ledger = Ledger::open(&config(&path, Duration::from_secs(90 * 86_400))).unwrap();
    assert_eq!(count(&path), 0);
    let (credits, unknown): (i64, i64) = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT credits, unknown_credit_requests FROM daily WHERE day = ?1",
            [schema::day_of(old)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((credits, unknown), (4, 3));
    assert_eq!(usage(&path, 0, GroupBy::Client).unwrap(), before);
    ledger.close().await.unwrap();

    // Folding onto a roll-up that holds an absurd figure caps it instead of overflowing.
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let mut late = row(old - 2 * DAY + 1, 9);
    late.credits_used = Some(1);
    ledger.record(late);
    ledger.close().await.unwrap();
    let mut conn = Connection::open(&path).unwrap();
    schema::fold(&mut conn, now - 100 * DAY).unwrap();
    let report = usage(&path, 0, GroupBy::Client).unwrap();
    assert_eq!(
        (
            report.total.requests,
            report.total.credits_used,
            report.total.unknown_credit_requests
        ),
        (7, 4, 6)
    );
}

#[tokio::test]
async fn close_keeps_rows_it_cannot_write_in_a_spool_that_the_next_open_imports() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let spool = spool_path(&path);
    let tuning = || Tuning {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        close_deadline: Duration::from_millis(100),
        ..Tuning::default()
    };
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning()).unwrap();
    ledger.record(row(NOV_1, 0));
    ledger.flush().await.unwrap();
    ledger
        .inner
        .shared
        .fail_writes
        .store(true, Ordering::SeqCst);
    let mut held: Vec<LedgerRow> = (1..4).map(|i| row(NOV_1 + i as i64, i)).collect();
    held[1].credits_used = None;
    held[2].outcome = Outcome::Cut;
    held[2].account = None;
    for r in &held {
        ledger.record(r.clone());
    }
    ledger.close().await.unwrap();
    assert_eq!(ledger.dropped(), 0, "nothing lost");
    assert_eq!(count(&path), 1);
    let kept = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(kept.lines().count(), 3, "{kept}");

    // The next open writes them into the ledger and removes the spool...
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning()).unwrap();
    assert!(!spool.exists());
    let mut expected = vec![row(NOV_1, 0)];
    expected.extend(held.iter().cloned());
    assert_eq!(read_rows(&path), expected);
    ledger.close().await.unwrap();

    // ...once: a spool whose rows are already in (a stop before its removal) adds nothing, and
    // a line cut by a crash is skipped.
    std::fs::write(&spool, format!("{kept}{{\"ts_ms\":1,\"requ")).unwrap();
    let ledger = Ledger::open_tuned(&long_retention(&path), tuning()).unwrap();
    assert!(!spool.exists());
    assert_eq!(read_rows(&path), expected);
    ledger.close().await.unwrap();
}

/// Not a check: measures what the writer sustains (rounds of 50 000 rows, under the channel's
/// capacity, each followed by a flush) and what `record` costs. Run with
/// `cargo test --release --lib ledger::tests::measure_write_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_write_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Ledger::open(&long_retention(&path)).unwrap();
    let (rounds, per_round) = (10, 50_000);
    let started = Instant::now();
    let mut in_record = Duration::ZERO;
    for round in 0..rounds {
        let rows: Vec<_> = (0..per_round)
            .map(|i| row(NOV_1 + i as i64, round * per_round + i))
            .collect();
        let t = Instant::now();
        for r in rows {
            ledger.record(r);
        }
        in_record += t.elapsed();
        ledger.flush().await.unwrap();
    }
    let elapsed = started.elapsed();
    ledger.close().await.unwrap();
    let total = rounds * per_round;
    eprintln!(
        "{total} rows committed in {elapsed:?} = {:.0} rows/s; record() {:.0} ns/row; \
         dropped {}; file {} bytes",
        total as f64 / elapsed.as_secs_f64(),
        in_record.as_nanos() as f64 / total as f64,
        ledger.dropped(),
        std::fs::metadata(&path).unwrap().len(),
    );
    assert_eq!(count(&path) as usize, total);
}
