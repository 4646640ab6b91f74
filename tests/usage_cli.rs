//! The real binary's `usage` command (SPEC §3): credit spend from a ledger file written by the
//! real `Ledger`, in the three formats and four groupings, without any secret set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, UNIX_EPOCH};

use support::ledger::{ledger_row, now_ms, seed_ledger, LedgerRow};
use support::{bounded, process};
use tokio::process::Command;

const PUT_LINK: &str = "PUT /api/fansly/{account}/tracking-links/{id}";
const LIST_LINKS: &str = "GET /api/fansly/{account}/tracking-links";
const WHOAMI: &str = "GET /api/whoami";
const ACCOUNT_A: &str = "fansly_acct_123";
const ACCOUNT_B: &str = "fansly_acct_999";

/// Env vars the config names; the tests make sure they are unset.
const KEY_VAR: &str = "OFGW_USAGE_TEST_UPSTREAM_KEY";
const TOKEN_VAR: &str = "OFGW_USAGE_TEST_ADMIN_TOKEN";

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2025-12-31T12:00:00Z: before `--since 2026-01-01`.
const DEC_31_2025: i64 = 1_767_182_400_000;

/// The UTC day of `ms`, `YYYY-MM-DD`.
fn day_of(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// A call `client` made of `route` at `ts_ms`.
fn row(
    ts_ms: i64,
    client: &str,
    route: &str,
    account: Option<&str>,
    credits: Option<u64>,
    status: u16,
) -> LedgerRow {
    let id = format!("req-{ts_ms}");
    ledger_row(ts_ms, &id, client, route, account, credits, status)
}

/// A folder with a full `gateway.toml` (whose secrets are in unset env vars) and a ledger holding:
/// in the last 24 hours crm-app 2 calls / 5 credits on account A, billing 1 call / 1 credit on
/// account B and 1 call of unknown cost answered 502 without an account; 3 days ago crm-app
/// 100 credits; on 2025-12-31 billing 1000 credits.
struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    ledger: PathBuf,
    now: i64,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("data").join("ledger.sqlite");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, toml(&ledger)).unwrap();

    let now = now_ms();
    let rows = [
        row(
            now - HOUR,
            "crm-app",
            PUT_LINK,
            Some(ACCOUNT_A),
            Some(2),
            200,
        ),
        row(
            now - 2 * HOUR,
            "crm-app",
            PUT_LINK,
            Some(ACCOUNT_A),
            Some(3),
            200,
        ),
        row(
            now - 3 * HOUR,
            "billing",
            LIST_LINKS,
            Some(ACCOUNT_B),
            Some(1),
            200,
        ),
        row(now - HOUR / 2, "billing", WHOAMI, None, None, 502),
        row(
            now - 3 * DAY,
            "crm-app",
            PUT_LINK,
            Some(ACCOUNT_A),
            Some(100),
            200,
        ),
        row(
            DEC_31_2025,
            "billing",
            LIST_LINKS,
            Some(ACCOUNT_B),
            Some(1000),
            200,
        ),
    ];
    seed_ledger(&ledger, rows).await;
    Fixture {
        dir,
        config,
        ledger,
        now,
    }
}

fn toml(ledger: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token_env = "{TOKEN_VAR}"

[upstream]
base_url = "http://127.0.0.1:9"
api_key_env = "{KEY_VAR}"

[ledger]
path = "{}"
retention = "3650d"

[[clients]]
name = "crm-app"
key_sha256 = "{}"
"#,
        ledger.display(),
        "ab".repeat(32),
    )
}

/// Runs `ofapi-gateway --config <config> usage <args>` with no secret in the environment.
async fn usage(config: &Path, args: &[&str]) -> Output {
    bounded(
        30,
        process::command(config, config.parent().unwrap())
            .arg("usage")
            .args(args)
            .env_remove(KEY_VAR)
            .env_remove(TOKEN_VAR)
            .output(),
    )
    .await
    .unwrap()
}

/// The command succeeded with nothing on stderr; its stdout.
#[track_caller]
fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(out)).unwrap()
}

/// `key -> credits_used` of a JSON report, in order.
fn credits(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["credits_used"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn usage_defaults_to_a_table_of_the_last_24_hours_by_client_without_any_secret_set() {
    let f = fixture().await;
    let table = ok_stdout(&usage(&f.config, &[]).await);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec![
                "CLIENT",
                "REQUESTS",
                "CREDITS",
                "CACHED",
                "UNKNOWN_CREDITS",
                "ERRORS"
            ],
            vec!["crm-app", "2", "5", "0", "0", "0"],
            vec!["billing", "2", "1", "0", "1", "1"],
            vec!["TOTAL", "4", "6", "0", "1", "1"],
        ],
        "{table}"
    );
}

#[tokio::test]
async fn usage_json_is_one_object_with_rows_and_a_total() {
    let f = fixture().await;
    let report = json(&usage(&f.config, &["--format", "json"]).await);
    assert_eq!(report["by"], "client");
    assert_eq!(
        credits(&report),
        vec![("crm-app".into(), 5), ("billing".into(), 1)]
    );
    assert_eq!(report["rows"][1]["requests"], 2);
    assert_eq!(report["rows"][1]["unknown_credit_requests"], 1);
    assert_eq!(report["rows"][1]["errors"], 1);
    assert_eq!(report["total"]["credits_used"], 6);
    assert_eq!(report["total"]["requests"], 4);
    let since = humantime::parse_rfc3339(report["since"].as_str().unwrap()).unwrap();
    let since_ms = since.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(
        (f.now - DAY - since_ms).abs() < 60_000,
        "since is 24h back: {}",
        report["since"]
    );
}

#[tokio::test]
async fn usage_csv_has_a_header_line_and_one_line_per_key() {
    let f = fixture().await;
    let csv = ok_stdout(&usage(&f.config, &["--format", "csv"]).await);
    assert_eq!(
        csv,
        "client,requests,credits_used,cached_requests,unknown_credit_requests,errors\r\n\
         crm-app,2,5,0,0,0\r\n\
         billing,2,1,0,1,1\r\n"
    );
}

#[tokio::test]
async fn usage_groups_by_account_route_and_day() {
    let f = fixture().await;
    let by_account = json(&usage(&f.config, &["--by", "account", "--format", "json"]).await);
    assert_eq!(by_account["by"], "account");
    assert_eq!(
        credits(&by_account),
        vec![
            (ACCOUNT_A.into(), 5),
            (ACCOUNT_B.into(), 1),
            ("(none)".into(), 0)
        ]
    );

    let by_route = json(&usage(&f.config, &["--by", "route", "--format", "json"]).await);
    assert_eq!(
        credits(&by_route),
        vec![
            (PUT_LINK.into(), 5),
            (LIST_LINKS.into(), 1),
            (WHOAMI.into(), 0)
        ]
    );

    let by_day = json(
        &usage(
            &f.config,
            &["--by", "day", "--since", "7d", "--format", "json"],
        )
        .await,
    );
    let days = credits(&by_day);
    let mut expected: Vec<(String, u64)> = Vec::new();
    for (ts, c) in [
        (f.now - 3 * DAY, 100),
        (f.now - 3 * HOUR, 1),
        (f.now - 2 * HOUR, 3),
        (f.now - HOUR, 2),
        (f.now - HOUR / 2, 0),
    ] {
        match expected.iter_mut().find(|(d, _)| *d == day_of(ts)) {
            Some((_, sum)) => *sum += c,
            None => expected.push((day_of(ts), c)),
        }
    }
    assert_eq!(days, expected, "chronological, one row per UTC day");
    assert_eq!(by_day["total"]["credits_used"], 106);
}

#[tokio::test]
async fn usage_since_a_date_counts_from_that_utc_midnight() {
    let f = fixture().await;
    let report = json(&usage(&f.config, &["--since", "2026-01-01", "--format", "json"]).await);
    assert_eq!(report["since"], "2026-01-01T00:00:00Z");
    assert_eq!(
        credits(&report),
        vec![("crm-app".into(), 105), ("billing".into(), 1)],
        "the 2025-12-31 row is before the date"
    );
    let report = json(&usage(&f.config, &["--since", "2025-12-31", "--format", "json"]).await);
    assert_eq!(report["total"]["credits_used"], 1106);
}

#[tokio::test]
async fn usage_without_a_ledger_file_exits_1_naming_the_path() {
    let f = fixture().await;
    let missing = f.dir.path().join("elsewhere").join("ledger.sqlite");
    std::fs::write(&f.config, toml(&missing)).unwrap();
    let out = usage(&f.config, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
    assert!(!missing.exists(), "a report never creates the ledger");
    assert!(f.ledger.exists());
}

#[tokio::test]
async fn usage_refuses_bad_arguments_with_a_nonzero_exit() {
    let f = fixture().await;
    for args in [
        &["--by", "week"][..],
        &["--format", "xml"][..],
        &["--since", "yesterday"][..],
    ] {
        let out = usage(&f.config, args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(args[0]),
            "{args:?} names the option: {stderr}"
        );
    }
}

#[tokio::test]
async fn usage_with_an_unreadable_config_exits_1_naming_it() {
    let f = fixture().await;
    let missing = f.dir.path().join("missing.toml");
    let out = usage(&missing, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[tokio::test]
async fn usage_help_explains_the_options() {
    let out = bounded(
        10,
        Command::new(process::BIN)
            .args(["usage", "--help"])
            .output(),
    )
    .await
    .unwrap();
    let help = ok_stdout(&out);
    for word in [
        "--since",
        "--by",
        "--format",
        "client, account, route, day",
        "table, json, csv",
        "2026-11-01",
    ] {
        assert!(help.contains(word), "{word} in {help}");
    }
}
