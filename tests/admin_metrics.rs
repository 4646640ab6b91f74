//! The admin listener's `/metrics` and `/usage` (SPEC §4, §7) and the ledger's say in `/readyz`
//! (SPEC §8), over real sockets. The admin service is served on its own here ([`TestAdmin`]),
//! built from a `Metrics` the test feeds and a real `Ledger` in a temporary folder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

const ADMIN_TOKEN: &str = "admin-TOKEN-0123456789";
const ROUTE: &str = "PUT /api/fansly/{account}/tracking-links/{id}";

/// A row of a call `client` made a minute ago.
fn row(client: &str, account: Option<&str>, credits: Option<u64>, status: u16) -> LedgerRow {
    ledger_row(
        now_ms() - 60_000,
        "req-1",
        client,
        ROUTE,
        account,
        credits,
        status,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_what_was_fed_under_the_spec_names_and_labels() {
    bounded(20, async {
        let admin = TestAdmin::start(None, true).await;
        let m = &admin.metrics;
        m.request(&"crm-app".into(), &ROUTE.into(), 200, Duration::from_millis(40));
        m.request(&"crm-app".into(), &ROUTE.into(), 429, Duration::from_millis(2));
        m.credits(&"crm-app".into(), &ROUTE.into(), 3);
        m.credits_unknown(&"billing".into(), &ROUTE.into());
        m.balance(10_055_796);
        m.upstream_rate_limit(Some(5000), Some(4999));
        m.rate_limited("crm-app", "upstream");
        m.unattributed_credits(2);
        m.budget("crm-app", 3, Some(49_997));
        m.budget("billing", 0, None);

        let resp = admin.get("/metrics", None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let text = resp.text();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let expect = [
            (
                format!(
                    "ofapi_gateway_requests_total{{client=\"crm-app\",route=\"{ROUTE}\",status=\"200\"}}"
                ),
                1.0,
            ),
            (
                format!(
                    "ofapi_gateway_requests_total{{client=\"crm-app\",route=\"{ROUTE}\",status=\"429\"}}"
                ),
                1.0,
            ),
            (
                format!("ofapi_gateway_credits_used_total{{client=\"crm-app\",route=\"{ROUTE}\"}}"),
                3.0,
            ),
            (
                format!(
                    "ofapi_gateway_credits_unknown_total{{client=\"billing\",route=\"{ROUTE}\"}}"
                ),
                1.0,
            ),
            ("ofapi_gateway_credit_balance".into(), 10_055_796.0),
            (
                "ofapi_gateway_upstream_rate_limit{kind=\"limit\"}".into(),
                5000.0,
            ),
            (
                "ofapi_gateway_upstream_rate_limit{kind=\"remaining\"}".into(),
                4999.0,
            ),
            (
                "ofapi_gateway_rate_limited_total{client=\"crm-app\",scope=\"upstream\"}".into(),
                1.0,
            ),
            ("ofapi_gateway_unattributed_credits_total".into(), 2.0),
            (
                "ofapi_gateway_budget_spent_credits{client=\"crm-app\"}".into(),
                3.0,
            ),
            (
                "ofapi_gateway_budget_remaining_credits{client=\"crm-app\"}".into(),
                49_997.0,
            ),
            (
                "ofapi_gateway_budget_spent_credits{client=\"billing\"}".into(),
                0.0,
            ),
            ("ofapi_gateway_ledger_dropped_rows_total".into(), 0.0),
            (
                format!("ofapi_gateway_request_duration_seconds_count{{route=\"{ROUTE}\"}}"),
                2.0,
            ),
            (
                format!(
                    "ofapi_gateway_request_duration_seconds_bucket{{le=\"0.05\",route=\"{ROUTE}\"}}"
                ),
                2.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
        }
        assert!(
            !text.contains("ofapi_gateway_budget_remaining_credits{client=\"billing\"}"),
            "no remaining series for a client without a budget"
        );
        for secret in [UPSTREAM_KEY, ALPHA_KEY] {
            assert!(!text.contains(secret));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_usage_need_the_admin_token_when_one_is_configured() {
    bounded(20, async {
        let admin = TestAdmin::start(Some(ADMIN_TOKEN), true).await;
        admin.metrics.credits(&"crm-app".into(), &ROUTE.into(), 1);
        for path in ["/metrics", "/usage"] {
            for token in [None, Some("wrong"), Some("admin-TOKEN-012345678")] {
                let resp = admin.get(path, token).await;
                assert_eq!(resp.status, 401, "{path} with {token:?}: {}", resp.text());
                assert_eq!(resp.json()["code"], "unauthenticated");
                assert!(resp.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
                assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
                assert!(!resp.everything().contains(ADMIN_TOKEN));
            }
            // Another scheme with the right token is refused too.
            let resp = HttpClient::http1()
                .send(
                    request("GET", &admin.url(path))
                        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
                        .body(empty_body())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, 401, "{path}");

            let resp = admin.get(path, Some(ADMIN_TOKEN)).await;
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        }
        for probe in ["/healthz", "/readyz"] {
            let resp = admin.get(probe, None).await;
            assert_eq!(resp.status, 200, "{probe} needs no token: {}", resp.text());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_metrics_and_usage_are_open() {
    bounded(20, async {
        let admin = TestAdmin::start(None, true).await;
        assert_eq!(admin.get("/metrics", None).await.status, 200);
        assert_eq!(admin.get("/usage", None).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_the_ledger_rows_by_client_as_json_by_default() {
    bounded(20, async {
        let admin = TestAdmin::start(Some(ADMIN_TOKEN), true).await;
        let ledger = admin.ledger.as_ref().unwrap();
        ledger.record(row("crm-app", Some(ACCOUNT), Some(2), 200));
        ledger.record(row("crm-app", Some(ACCOUNT), Some(3), 200));
        ledger.record(row("crm-app", None, None, 502));
        ledger.record(row("billing", Some(OTHER_ACCOUNT), Some(1), 200));
        // Older than the window asked for below: not counted.
        let mut old = row("billing", Some(OTHER_ACCOUNT), Some(100), 200);
        old.ts_ms = now_ms() - 3 * 86_400_000;
        ledger.record(old);
        ledger.flush().await.unwrap();

        let resp = admin
            .get("/usage?since=24h&by=client", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let body = resp.json();
        assert_eq!(body["by"], "client");
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{body}");
        assert_eq!(rows[0]["key"], "crm-app");
        assert_eq!(rows[0]["requests"], 3);
        assert_eq!(rows[0]["credits_used"], 5);
        assert_eq!(rows[0]["unknown_credit_requests"], 1);
        assert_eq!(rows[0]["errors"], 1);
        assert_eq!(rows[1]["key"], "billing");
        assert_eq!(rows[1]["credits_used"], 1);
        assert_eq!(body["total"]["credits_used"], 6);

        // The defaults are since=24h, by=client, format=json.
        let resp = admin.get("/usage", Some(ADMIN_TOKEN)).await;
        assert_eq!(resp.json()["rows"], body["rows"]);

        // A wider window takes in the old row; other groupings and formats.
        let resp = admin
            .get("/usage?since=7d&by=account&format=csv", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("text/csv; charset=utf-8"));
        let csv = resp.text();
        let mut lines = csv.split("\r\n");
        assert_eq!(
            lines.next(),
            Some("account,requests,credits_used,cached_requests,unknown_credit_requests,errors")
        );
        assert_eq!(lines.next(), Some(&*format!("{OTHER_ACCOUNT},2,101,0,0,0")));
        assert_eq!(lines.next(), Some(&*format!("{ACCOUNT},2,5,0,0,0")));
        assert_eq!(lines.next(), Some("(none),1,0,0,1,1"));

        let resp = admin
            .get("/usage?by=route&format=table", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let table = resp.text();
        assert!(table.starts_with("ROUTE"), "{table}");
        assert!(table.contains(ROUTE), "{table}");
        assert!(
            table.lines().last().unwrap().starts_with("TOTAL"),
            "{table}"
        );

        // An encoded RFC 3339 timestamp is read as one.
        let resp = admin
            .get(
                "/usage?since=2020-01-01T00%3A00%3A00%2B02%3A00",
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["since"], "2019-12-31T22:00:00Z");
        assert_eq!(resp.json()["total"]["credits_used"], 106);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_refuses_bad_parameters_with_400_naming_the_problem() {
    bounded(20, async {
        let admin = TestAdmin::start(None, true).await;
        for (query, mentions) in [
            ("since=yesterday", "since"),
            ("since=", "since"),
            ("by=week", "by"),
            ("format=xml", "format"),
            ("sinse=24h", "sinse"),
            ("since=%zz", "since"),
        ] {
            let resp = admin.get(&format!("/usage?{query}"), None).await;
            assert_eq!(resp.status, 400, "{query}: {}", resp.text());
            let body = resp.json();
            assert_eq!(body["code"], "bad_request", "{query}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(mentions), "{query}: {error}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_without_a_ledger_is_503() {
    bounded(20, async {
        let admin = TestAdmin::start(None, false).await;
        let resp = admin.get("/usage", None).await;
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert_eq!(resp.json()["code"], "ledger_unavailable");
        assert!(resp.json()["error"].as_str().is_some());
        // The probes do not depend on a ledger.
        assert_eq!(admin.get("/readyz", None).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_naming_the_ledger_while_it_cannot_write() {
    bounded(20, async {
        let admin = TestAdmin::start(None, true).await;
        let ledger = admin.ledger.clone().unwrap();
        ledger.record(row("crm-app", Some(ACCOUNT), Some(1), 200));
        ledger.flush().await.unwrap();
        assert_eq!(admin.get("/readyz", None).await.status, 200);

        // Put a plain file where the ledger's folder was: the next batch cannot be written.
        let folder = admin.dir.path().join("data");
        std::fs::rename(&folder, admin.dir.path().join("moved")).unwrap();
        std::fs::write(&folder, b"not a folder").unwrap();
        ledger.record(row("crm-app", Some(ACCOUNT), Some(1), 200));

        // The writer notices on its next batch (a fraction of a second): poll the probe.
        let body = loop {
            let resp = admin.get("/readyz", None).await;
            if resp.status == 503 {
                break resp.json();
            }
            assert_eq!(resp.status, 200, "{}", resp.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(body["status"], "unavailable");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.starts_with("ledger: "), "{reason}");
        assert!(reason.contains(&*folder.to_string_lossy()), "{reason}");
        // Liveness is not readiness: the process is still up.
        assert_eq!(admin.get("/healthz", None).await.status, 200);

        // Once the folder can be created again, the writer recovers and so does /readyz.
        std::fs::remove_file(&folder).unwrap();
        ledger.flush().await.unwrap();
        assert_eq!(admin.get("/readyz", None).await.status, 200);
    })
    .await
}
