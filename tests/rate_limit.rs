//! Rate limiting over real sockets: where a client stands (`RateLimit-*`) on every proxied
//! answer, the 429 a client over its own limit gets (never forwarded), and an upstream 429
//! turned into the gateway's own and pausing everyone, a learned limit that changes back and
//! forth. The pacing itself is tested in paused time in `src/limiter/tests.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

/// A gateway whose `alpha` client may make `alpha_rpm` requests a minute and wait `max_wait`.
async fn gateway(mock: &MockUpstream, alpha_rpm: u32, max_wait: Duration) -> TestGateway {
    let options = Options {
        requests_per_minute: 1000,
        headroom: 0.9,
        max_wait,
        alpha_requests_per_minute: Some(alpha_rpm),
        ..Options::default()
    };
    TestGateway::start(&mock.base_url(), options).await
}

async fn get(client: &HttpClient, gw: &TestGateway, key: &str) -> Resp {
    let url = format!(
        "http://{}/api/fansly/{ACCOUNT}/tracking-links",
        gw.client_addr
    );
    let req = request("GET", &url)
        .header("authorization", bearer(key))
        .body(empty_body())
        .unwrap();
    client.send(req).await.unwrap()
}

#[tokio::test]
async fn proxied_answers_say_where_the_client_stands() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| with_limits(Reply::fixture(), "5000", "4990")).await;
        let gw = gateway(&mock, 600, Duration::from_secs(2)).await;
        let resp = get(&HttpClient::http1(), &gw, ALPHA_KEY).await;
        assert_eq!(resp.status, 200);
        // The upstream reported 5000 a minute: the budget is 4500, but alpha's own 600 is tighter.
        assert_eq!(resp.header("ratelimit-limit"), Some("600"));
        assert_eq!(resp.header("ratelimit-remaining"), Some("599"));
        let reset: u64 = resp.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
        // The upstream's own headers pass through untouched.
        assert_eq!(resp.header("x-rate-limit-limit-minute"), Some("5000"));
        gw.shutdown().await;
    })
    .await
}

fn with_limits(reply: Reply, limit: &str, remaining: &str) -> Reply {
    reply
        .header("x-rate-limit-limit-minute", limit)
        .header("x-rate-limit-remaining-minute", remaining)
}

#[tokio::test]
async fn a_client_over_its_own_limit_gets_429_and_is_not_forwarded_while_others_are_served() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        // Burst 1 + 3/20 = 1, then one every 20 s; no waiting.
        let gw = gateway(&mock, 3, Duration::ZERO).await;
        let client = HttpClient::http1();
        assert_eq!(get(&client, &gw, ALPHA_KEY).await.status, 200);
        let refused = get(&client, &gw, ALPHA_KEY).await;
        let body = assert_gateway_error(&refused, 429, "rate_limited");
        assert!(
            body["error"].as_str().unwrap().contains("client's"),
            "{body}"
        );
        let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        let retry_after_ms: u64 = refused.header("retry-after-ms").unwrap().parse().unwrap();
        assert!(
            retry_after >= 1 && retry_after_ms >= 1,
            "{retry_after} {retry_after_ms}"
        );
        assert_eq!(retry_after, retry_after_ms.div_ceil(1000));
        // The headers speak for the limit that refused: nothing left until the retry is due.
        assert_eq!(refused.header("ratelimit-limit"), Some("3"));
        assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
        assert_eq!(
            refused.header("ratelimit-reset"),
            refused.header("retry-after")
        );
        assert_eq!(
            mock.count(),
            1,
            "the refused request never reached the upstream"
        );

        // Another client is not held back by alpha's limit.
        assert_eq!(get(&client, &gw, ACCOUNTS_KEY).await.status, 200);
        assert_eq!(mock.count(), 2);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn an_upstream_429_becomes_the_gateways_own_and_pauses_every_client() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| {
            Reply::json(429, r#"{"error":"Too Many Requests."}"#).header("retry-after", "30")
        })
        .await;
        let gw = gateway(&mock, 600, Duration::from_secs(1)).await;
        let client = HttpClient::http1();
        let first = get(&client, &gw, ALPHA_KEY).await;
        assert_gateway_error(&first, 429, "rate_limited");
        assert_eq!(first.header("retry-after"), Some("30"));
        assert_eq!(first.header("ratelimit-remaining"), Some("0"));
        assert_eq!(first.header("ratelimit-reset"), Some("30"));
        // Every client now gets 429 at once, without touching the upstream.
        let second = get(&client, &gw, ACCOUNTS_KEY).await;
        assert_gateway_error(&second, 429, "rate_limited");
        let retry_after: u64 = second.header("retry-after").unwrap().parse().unwrap();
        assert!((28..=30).contains(&retry_after), "{retry_after}");
        assert_eq!(mock.count(), 1);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn the_limit_is_learned_from_meta_when_the_headers_say_nothing() {
    bounded(20, async {
        // The fixture's `_meta._rate_limits.limit_minute` is 5000; no rate headers at all.
        let mock = MockUpstream::start(|_| Reply::json(200, FIXTURE)).await;
        let gw = gateway(&mock, 100_000, Duration::from_secs(2)).await;
        let client = HttpClient::http1();
        let first = get(&client, &gw, ACCOUNTS_KEY).await;
        assert_eq!(first.status, 200);
        assert_eq!(
            first.header("ratelimit-limit"),
            Some("900"),
            "the configured 1000 × 0.9"
        );
        // The first body was read to its end, so its `_meta` has been seen.
        let second = get(&client, &gw, ACCOUNTS_KEY).await;
        assert_eq!(
            second.header("ratelimit-limit"),
            Some("4500"),
            "floor(5000 × 0.9)"
        );
        gw.shutdown().await;
    })
    .await
}

/// A mock whose first answer reports `first` requests a minute and every later one `then`.
async fn mock_reporting(first: &'static str, then: &'static str) -> MockUpstream {
    let answered = AtomicUsize::new(0);
    MockUpstream::start(move |_| {
        let n = answered.fetch_add(1, Ordering::SeqCst);
        let limit = if n == 0 { first } else { then };
        let remaining = limit.parse::<usize>().unwrap().saturating_sub(n + 1);
        // The body's `_meta` says 5000, but the headers, when present, are what counts.
        with_limits(Reply::json(200, FIXTURE), limit, &remaining.to_string())
    })
    .await
}

#[tokio::test]
async fn calls_right_after_the_upstream_reports_its_old_limit_again_are_not_refused() {
    bounded(20, async {
        // Reported once: 10 a minute (6.7 s a request); then 5000 again.
        let mock = mock_reporting("10", "5000").await;
        let gw = gateway(&mock, 100_000, Duration::from_secs(1)).await;
        let client = HttpClient::http1();
        for call in 0..20 {
            let resp = get(&client, &gw, ACCOUNTS_KEY).await;
            assert_eq!(resp.status, 200, "call {call}: {}", resp.text());
        }
        assert_eq!(mock.count(), 20);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_429_from_the_upstream_budget_says_nothing_remains_until_its_retry_after() {
    bounded(20, async {
        let mock = mock_reporting("10", "10").await;
        let gw = gateway(&mock, 100_000, Duration::from_secs(1)).await;
        let client = HttpClient::http1();
        // 10 a minute: a burst of 2, then one every 6.7 s, past max_wait.
        assert_eq!(get(&client, &gw, ACCOUNTS_KEY).await.status, 200);
        assert_eq!(get(&client, &gw, ACCOUNTS_KEY).await.status, 200);
        let refused = get(&client, &gw, ACCOUNTS_KEY).await;
        let body = assert_gateway_error(&refused, 429, "rate_limited");
        assert!(
            body["error"].as_str().unwrap().contains("upstream"),
            "{body}"
        );
        assert_eq!(
            mock.count(),
            2,
            "the refused request never reached the upstream"
        );
        let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!((6..=7).contains(&retry_after), "{retry_after}");
        assert_eq!(refused.header("ratelimit-limit"), Some("9"));
        assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
        assert_eq!(
            refused.header("ratelimit-reset"),
            refused.header("retry-after"),
            "the quota is back when the retry is due"
        );
        gw.shutdown().await;
    })
    .await
}
