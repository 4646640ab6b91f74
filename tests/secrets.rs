//! The upstream key is never printed, logged or returned (SPEC §4): not in any response of any
//! kind, and not in the configuration's `Debug`.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(UPSTREAM_KEY) && !text.contains("upstream-SECRET"),
        "the upstream key leaked in {what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_of_any_kind_carries_the_upstream_key() {
    bounded(30, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |req| {
            let path = req.uri.path();
            if path.ends_with("/slow") {
                Reply::fixture().gated(&held)
            } else if path.ends_with("/close") {
                Reply::Close
            } else if path.ends_with("/unauthorized") {
                Reply::json(401, r#"{"error":"Unauthorized. Check your API key."}"#)
            } else if path.ends_with("/redirect") {
                Reply::status(302).header("location", "https://cdn.example.test/x")
            } else {
                Reply::fixture()
            }
        })
        .await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                max_body_bytes: 1024,
                upstream_timeout: Duration::from_millis(300),
                ..Options::default()
            },
        )
        .await;
        let client = HttpClient::http1();
        let link = gw.url(&tracking_link_path(ACCOUNT));
        let mut responses = vec![
            // Success, and upstream answers passed through.
            client
                .call("PUT", &link, ALPHA_KEY, r#"{"label":"x"}"#)
                .await,
            client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await,
            client
                .get(&gw.url("/api/x/unauthorized"), Some(ALPHA_KEY))
                .await,
            client
                .get(&gw.url("/api/x/redirect"), Some(ALPHA_KEY))
                .await,
            // Every kind of gateway error.
            client.get(&gw.url("/api//x"), Some(ALPHA_KEY)).await,
            client.call("PUT", &link, ALPHA_KEY, "{nope").await,
            client.get(&gw.url("/api/whoami"), None).await,
            client.get(&gw.url("/api/whoami"), Some(UPSTREAM_KEY)).await,
            client.get(&gw.url("/api/whoami"), Some(DISABLED_KEY)).await,
            client.get(&gw.url("/api/whoami"), Some(SCOPED_KEY)).await,
            client.get(&gw.url("/nope"), Some(ALPHA_KEY)).await,
            client
                .send(
                    request("OPTIONS", &gw.url("/api/whoami"))
                        .header("authorization", bearer(ALPHA_KEY))
                        .body(empty_body())
                        .unwrap(),
                )
                .await
                .unwrap(),
            client
                .send(
                    request("POST", &gw.url("/api/x"))
                        .header("authorization", bearer(ALPHA_KEY))
                        .body(full_body(vec![b'a'; 4096]))
                        .unwrap(),
                )
                .await
                .unwrap(),
            client
                .send(
                    request("PUT", &link)
                        .header("authorization", bearer(ALPHA_KEY))
                        .header("content-type", "text/plain")
                        .body(full_body(r#"{"label":"x"}"#))
                        .unwrap(),
                )
                .await
                .unwrap(),
            client.call("PUT", &link, ALPHA_KEY, r#"{"label":5}"#).await,
            client.get(&gw.url("/api/x/close"), Some(ALPHA_KEY)).await,
            client.get(&gw.url("/api/x/slow"), Some(ALPHA_KEY)).await,
            client.get(&gw.url("/healthz"), None).await,
        ];
        gate.open();
        let statuses: Vec<u16> = responses.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(
            statuses,
            [
                200, 200, 401, 302, 400, 400, 401, 401, 401, 403, 404, 405, 413, 415, 422, 502,
                504, 200
            ]
        );
        let offline = TestGateway::start(&closed_port_url().await, Options::default()).await;
        responses.push(
            client
                .get(&offline.url("/api/whoami"), Some(ALPHA_KEY))
                .await,
        );
        assert_eq!(responses.last().unwrap().status, 502);
        for resp in &responses {
            assert_no_secret(&format!("a {} response", resp.status), &resp.everything());
        }
        let admin = client.get(&gw.admin_url("/readyz"), None).await;
        assert_no_secret("/readyz", &admin.everything());
    })
    .await
}

#[tokio::test]
async fn the_configs_debug_output_redacts_the_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = build_config(
        "https://app.onlyfansapi.com",
        Options::default(),
        dir.path(),
    );
    let debug = format!("{config:?}");
    assert_no_secret("format!(\"{:?}\", config)", &debug);
    let pretty = format!("{config:#?}");
    assert_no_secret("format!(\"{:#?}\", config)", &pretty);
    assert!(debug.contains("redacted"), "{debug}");
    assert_no_secret("the summary", &config.summary());
    // Nor do client keys appear: only their hashes are held.
    assert!(!debug.contains(ALPHA_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateways_config_redacts_the_upstream_key() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        assert_no_secret("Gateway::config()", &format!("{:?}", gw.gateway.config()));
    })
    .await
}
