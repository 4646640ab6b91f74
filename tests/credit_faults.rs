//! Credit figures and ledgers that cannot be trusted (SPEC §7): an upstream answer whose `_meta`
//! or headers report a figure that cannot be real, a ledger that already holds such a figure
//! (written by an older gateway), and a ledger that cannot be read at start. None of them may
//! wrap a counter, fail a report, or hand a spent budget out again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::process;
use support::*;

const THINGS: &str = "GET /api/fansly/{account}/things/{id}";

/// A config for `serve`: listeners on port 0, the upstream at `upstream`, the ledger at
/// `ledger`; `crm-app` ([`ALPHA_KEY`]) with a monthly budget of `budget`, `free`
/// ([`SCOPED_KEY`]) without one.
fn serve_toml(upstream: &str, ledger: &Path, budget: u64) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "{upstream}"
api_key_env = "ONLYFANSAPI_API_KEY"
connect_timeout = "2s"
timeout = "20s"

[ledger]
path = "{ledger}"

[credits]
low_balance_warning = 0

[[clients]]
name = "crm-app"
key_sha256 = "{alpha}"
credit_budget = {budget}
budget_period = "month"

[[clients]]
name = "free"
key_sha256 = "{free}"
"#,
        ledger = ledger.display(),
        alpha = sha256_hex(ALPHA_KEY.as_bytes()),
        free = sha256_hex(SCOPED_KEY.as_bytes()),
    )
}

/// `ofapi-gateway --config <config> usage <args>`.
async fn usage_cli(config: &Path, args: &[&str]) -> Output {
    bounded(
        30,
        process::command(config, config.parent().unwrap())
            .arg("usage")
            .args(args)
            .output(),
    )
    .await
    .unwrap()
}

fn series(name: &str, client: &str) -> String {
    format!("{name}{{client=\"{client}\",route=\"{THINGS}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_credit_figure_is_unknown_and_breaks_no_counter_report_or_budget() {
    bounded(90, async {
        let mock = MockUpstream::start(|req| {
            let meta = |used: &str, balance: &str| {
                format!(r#"{{"data":{{}},"_meta":{{"_credits":{{"used":{used},"balance":{balance}}}}}}}"#)
            };
            // The last segment holds a digit, so that every call has the route template THINGS.
            match req.uri.path().rsplit('/').next().unwrap() {
                "1first" => Reply::json(200, &meta("1", "1000")),
                "2absurd" => Reply::json(200, &meta("18446744073709551615", "999")),
                "3headers" => Reply::json(200, r#"{"data":{}}"#)
                    .header("x-ofapi-credits-used", "18446744073709551615")
                    .header("x-ofapi-credits-balance", "9007199254740993"),
                // More than the 999 the balance was before the call.
                "4overdrawn" => Reply::json(200, &meta("5000", "10")),
                _ => Reply::json(200, &meta("1", "9")),
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.sqlite");
        let served = process::GatewayProcess::start(dir.path(), &serve_toml(&mock.base_url(), &ledger, 100)).await;
        let http = HttpClient::http1();
        let metrics = || async { http.get(&served.admin_url("/metrics"), None).await.text() };
        let mut ids = Vec::new();
        let mut used_seen = Vec::new();
        for name in ["1first", "2absurd", "3headers", "4overdrawn", "5last"] {
            let resp = http
                .get(&served.url(&format!("/api/fansly/{ACCOUNT}/things/{name}")), Some(ALPHA_KEY))
                .await;
            assert_eq!(resp.status, 200, "{name}: {}", resp.text());
            ids.push(resp.header("x-request-id").unwrap().to_owned());
            let text = metrics().await;
            used_seen.push(sample(&text, &series("ofapi_gateway_credits_used_total", "crm-app")));
        }
        assert_eq!(
            used_seen,
            [Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(2.0)],
            "the credits counter never goes down"
        );
        let text = metrics().await;
        assert_eq!(
            sample(&text, &series("ofapi_gateway_credits_unknown_total", "crm-app")),
            Some(3.0),
            "{text}"
        );
        assert_eq!(sample(&text, "ofapi_gateway_credit_balance"), Some(9.0));
        // Unknown calls are charged what was reserved for them (the route's last cost, 1).
        assert_eq!(
            sample(&text, "ofapi_gateway_budget_spent_credits{client=\"crm-app\"}"),
            Some(5.0),
            "{text}"
        );
        // The balance fell by 1 and 989 across the two calls of unknown cost that reported one:
        // credits not charged to a call of known cost.
        assert_eq!(
            sample(&text, "ofapi_gateway_unattributed_credits_total"),
            Some(990.0)
        );
        // The budget still works: the client is served.
        let resp = http
            .get(&served.url(&format!("/api/fansly/{ACCOUNT}/things/6again")), Some(ALPHA_KEY))
            .await;
        assert_eq!(resp.status, 200);

        // Admin /usage reports (rows reach the file in batches: wait for all six).
        let report = loop {
            let resp = http
                .get(&served.admin_url("/usage?since=24h&by=client&format=json"), None)
                .await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            let report = resp.json();
            if report["total"]["requests"] == 6 {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(report["total"]["credits_used"], 3, "{report}");
        assert_eq!(report["total"]["unknown_credit_requests"], 3, "{report}");

        drop(http);
        let config = served.config.clone();
        let lines = served.stop().await;

        let rows = ledger_rows(&ledger);
        let expect = [
            (Some(1), Some(1000)),
            (None, Some(999)),
            (None, None),
            (None, Some(10)),
            (Some(1), Some(9)),
        ];
        for (id, expected) in ids.iter().zip(expect) {
            let row = row_of(&rows, id);
            assert_eq!((row.credits_used, row.balance), expected, "{id}: {rows:?}");
        }
        // The log line of each says what was not taken.
        let logged = |id: &str| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "request" && v["request_id"] == id)
                .unwrap_or_else(|| panic!("no request line for {id}"))
        };
        let absurd = logged(&ids[1]);
        assert!(absurd.get("credits_used").is_none(), "{absurd}");
        assert_eq!(
            absurd["implausible_credits"],
            "used 18446744073709551615 is above 2^53; taken as unknown",
            "{absurd}"
        );
        assert_eq!(
            logged(&ids[2])["implausible_credits"],
            "used 18446744073709551615 is above 2^53; balance 9007199254740993 is above 2^53; \
             taken as unknown"
        );
        assert_eq!(
            logged(&ids[3])["implausible_credits"],
            "used 5000 is above the balance before the call (999); taken as unknown"
        );
        assert!(logged(&ids[4]).get("implausible_credits").is_none());

        let out = usage_cli(&config, &["--since", "24h", "--format", "json"]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["total"]["credits_used"], 3, "{report}");
        assert_eq!(report["total"]["unknown_credit_requests"], 3, "{report}");
    })
    .await
}

/// Row `n` of the seeded calls of `client` at `ts_ms`, costing `credits`.
fn row(ts_ms: i64, n: usize, client: &str, credits: Option<u64>) -> LedgerRow {
    let id = format!("seeded-{n}");
    ledger_row(ts_ms, &id, client, THINGS, Some(ACCOUNT), credits, 200)
}

/// A ledger at `path` in which `crm-app` spent 10 credits this month, through the real writer.
/// With `absurd`, also a row of `u64::MAX` credits, which the writer stores as `i64::MAX`: the
/// row an older gateway wrote for an absurd `_meta`.
async fn seed(path: &Path, absurd: bool) {
    let now = now_ms();
    let mut rows = vec![row(now - 2, 1, "crm-app", Some(10))];
    if absurd {
        rows.push(row(now - 1, 2, "crm-app", Some(u64::MAX)));
    }
    seed_ledger(path, rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_holding_an_absurd_row_from_an_older_gateway_still_reports_and_restores_budgets() {
    bounded(90, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.sqlite");
        seed(&ledger, true).await;
        let stored = row_of(&ledger_rows(&ledger), "seeded-2").credits_used;
        assert_eq!(stored, Some(i64::MAX as u64));

        let served =
            process::GatewayProcess::start(dir.path(), &serve_toml(&mock.base_url(), &ledger, 10))
                .await;
        let http = HttpClient::http1();
        let ready = http.get(&served.admin_url("/readyz"), None).await;
        assert_eq!(ready.status, 200, "{}", ready.text());
        // The month's 10 credits are restored: the budget of 10 is spent.
        let refused = http
            .call(
                "PUT",
                &served.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"x"}"#,
            )
            .await;
        assert_gateway_error(&refused, 402, "budget_exceeded");
        assert_eq!(mock.count(), 0);
        let resp = http
            .get(&served.admin_url("/usage?since=24h&format=json"), None)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let report = resp.json();
        assert_eq!(report["total"]["credits_used"], 10, "{report}");
        assert_eq!(report["total"]["unknown_credit_requests"], 1, "{report}");
        drop(http);
        let config = served.config.clone();
        served.stop().await;

        for format in ["table", "json", "csv"] {
            let out = usage_cli(&config, &["--since", "24h", "--format", format]).await;
            assert!(
                out.status.success(),
                "{format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains("crm-app"), "{text}");
            assert!(!text.contains(&i64::MAX.to_string()), "{text}");
        }
    })
    .await
}

/// Damages the root page of the ledger's `daily` table (its page type byte) in place, and
/// returns what was there. Opening the file for writing and adding rows do not read that page;
/// every report (and the budgets' read of what was spent) does, and fails: "database disk
/// image is malformed".
fn damage_daily_table(path: &Path) -> (u64, Vec<u8>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'daily'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let offset = ((root - 1) * page_size) as u64;
    let page = read_at(path, offset, page_size as usize);
    write_at(path, offset, &[0xff]);
    (offset, page)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes).unwrap();
    bytes
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_unreadable_at_start_refuses_budgeted_clients_and_readyz_until_it_can_be_read() {
    bounded(90, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        // `alpha` spent its 10 credits this month.
        seed_ledger(&path, [row(now_ms(), 1, "alpha", Some(10))]).await;
        let (offset, page) = damage_daily_table(&path);
        let unreadable = report_error(&path);
        assert!(unreadable.contains("malformed"), "{unreadable}");

        // It starts: the file is writable.
        let options = Options {
            alpha_credit_budget: Some(10),
            ..Options::in_dir(dir.path())
        };
        let gw = TestGateway::start(&mock.base_url(), options).await;
        assert_eq!(gw.ledger_path(), path);
        let admin = |p: &str| gw.admin_url(p);
        let url = |p: &str| gw.url(p);
        let http = HttpClient::http1();
        let put = |key: &'static str| {
            let (http, url) = (http.clone(), url(&tracking_link_path(ACCOUNT)));
            async move { http.call("PUT", &url, key, r#"{"label":"x"}"#).await }
        };

        let ready = http.get(&admin("/readyz"), None).await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        let reason = ready.json()["reason"].as_str().unwrap().to_owned();
        assert!(reason.starts_with("budgets: "), "{reason}");
        assert!(
            reason.contains("cannot be read from the ledger"),
            "{reason}"
        );
        assert!(reason.contains("malformed"), "{reason}");

        let refused = put(ALPHA_KEY).await;
        let body = assert_gateway_error(&refused, 503, "overloaded");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("budget ledger cannot be read"),
            "{body}"
        );
        assert_eq!(mock.count(), 0, "a budgeted client's call never went out");
        let free = put(SCOPED_KEY).await;
        assert_eq!(free.status, 200, "a client without a budget is served");
        assert_eq!(mock.count(), 1);

        // Repaired, the ledger is read again in the background and the spend restored.
        write_at(&path, offset, &page);
        loop {
            let ready = http.get(&admin("/readyz"), None).await;
            if ready.status == 200 {
                break;
            }
            assert_eq!(ready.status, 503);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let spent = put(ALPHA_KEY).await;
        assert_gateway_error(&spent, 402, "budget_exceeded");
        assert_eq!(mock.count(), 1);
        assert_eq!(put(SCOPED_KEY).await.status, 200);
        drop(http);
        gw.shutdown().await;
    })
    .await
}
