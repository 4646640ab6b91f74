//! Graceful shutdown (SPEC §8): stop accepting, let in-flight requests finish within
//! `shutdown_grace`, then return.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::net::TcpStream;

async fn held_gateway(options: Options) -> (MockUpstream, TestGateway, Gate) {
    let gate = Gate::new();
    let held = gate.clone();
    let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
    let gw = TestGateway::start(&mock.base_url(), options).await;
    (mock, gw, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_completes_while_new_connections_are_refused() {
    bounded(30, async {
        let (mock, gw, gate) = held_gateway(Options {
            shutdown_grace: Duration::from_secs(20),
            ..Options::default()
        })
        .await;
        let client_addr = gw.client_addr;
        let url = gw.url(&tracking_link_path(ACCOUNT));
        let in_flight = tokio::spawn(async move {
            HttpClient::http1()
                .call("PUT", &url, ALPHA_KEY, r#"{"label":"draining"}"#)
                .await
        });
        mock.wait_for_count(1).await;

        let shutdown = tokio::spawn(gw.shutdown());
        tokio::time::timeout(Duration::from_secs(5), until_refused(client_addr))
            .await
            .expect("the client listener stops accepting once shutdown starts");
        assert!(
            !shutdown.is_finished(),
            "shutdown returned while a request was in flight"
        );

        gate.open();
        let resp = in_flight.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), FIXTURE);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown returns once the last request is done")
            .unwrap();
        let refused = TcpStream::connect(client_addr).await;
        assert!(refused.is_err(), "still accepting after shutdown");
        assert_eq!(mock.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_only_idle_connections_returns_at_once() {
    bounded(30, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                shutdown_grace: Duration::from_secs(20),
                ..Options::default()
            },
        )
        .await;
        // Leave one idle HTTP/1.1 keep-alive and one idle HTTP/2 connection open.
        let h1 = HttpClient::http1();
        let h2 = HttpClient::h2c();
        assert_eq!(
            h1.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await.status,
            200
        );
        assert_eq!(
            h2.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await.status,
            200
        );
        let started = Instant::now();
        gw.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "idle connections held shutdown for {:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_the_grace_when_a_request_never_finishes() {
    bounded(30, async {
        let grace = Duration::from_millis(500);
        let (mock, gw, _gate_never_opened) = held_gateway(Options {
            shutdown_grace: grace,
            upstream_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            ..Options::default()
        })
        .await;
        let url = gw.url("/api/whoami");
        let _in_flight =
            tokio::spawn(async move { HttpClient::http1().get(&url, Some(ALPHA_KEY)).await });
        mock.wait_for_count(1).await;

        let started = Instant::now();
        gw.shutdown().await;
        let took = started.elapsed();
        assert!(took >= grace, "returned before the grace: {took:?}");
        assert!(
            took < grace + Duration::from_secs(2),
            "took {took:?} with a grace of {grace:?}"
        );
    })
    .await
}

/// Once `shutdown()` has returned after the grace, nothing of the gateway keeps serving: the
/// connection of a request that outlived the grace is closed, it is not left to run until the
/// upstream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_outlive_the_grace_are_closed_when_shutdown_returns() {
    bounded(30, async {
        let grace = Duration::from_millis(300);
        let (mock, gw, gate) = held_gateway(Options {
            shutdown_grace: grace,
            upstream_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            ..Options::default()
        })
        .await;
        let url = gw.url("/api/whoami");
        let in_flight = tokio::spawn(async move {
            HttpClient::http1()
                .send(
                    request("GET", &url)
                        .header("authorization", bearer(ALPHA_KEY))
                        .body(empty_body())
                        .unwrap(),
                )
                .await
        });
        mock.wait_for_count(1).await;
        gw.shutdown().await;

        let outcome = tokio::time::timeout(Duration::from_secs(5), in_flight).await;
        gate.open();
        let outcome = outcome.expect(
            "the request that outlived the grace is still being served after shutdown returned",
        );
        if let Ok(resp) = outcome.unwrap() {
            assert_ne!(resp.status, 200, "served after shutdown returned");
        }
    })
    .await
}
