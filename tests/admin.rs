//! The admin listener (SPEC §4, §8): `/healthz`, `/readyz`, and readiness turning off for the drain.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

async fn start() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(|_| Reply::fixture()).await;
    let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
    (mock, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_healthz_and_readyz_answer_200_without_auth() {
    bounded(20, async {
        let (mock, gw) = start().await;
        let client = HttpClient::http1();
        let resp = client.get(&gw.admin_url("/healthz"), None).await;
        assert_eq!(resp.status, 200);
        assert!(resp
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        let resp = client.get(&gw.admin_url("/readyz"), None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["status"], "ready");
        assert_eq!(mock.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_unknown_paths_are_404_and_api_is_not_served_there() {
    bounded(20, async {
        let (mock, gw) = start().await;
        let client = HttpClient::http1();
        for path in ["/", "/nope", "/api/whoami", "/healthz/x"] {
            let resp = client.get(&gw.admin_url(path), Some(ALPHA_KEY)).await;
            assert_eq!(resp.status, 404, "{path}");
            assert_eq!(resp.json()["code"], "not_found");
        }
        let resp = client
            .send(
                request("POST", &gw.admin_url("/readyz"))
                    .body(empty_body())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 405);
        assert_eq!(mock.count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_once_shutdown_starts_while_requests_drain() {
    bounded(30, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                shutdown_grace: Duration::from_secs(20),
                ..Options::default()
            },
        )
        .await;
        let readyz = gw.admin_url("/readyz");
        assert_eq!(HttpClient::http1().get(&readyz, None).await.status, 200);

        let url = gw.url("/api/whoami");
        let in_flight =
            tokio::spawn(async move { HttpClient::http1().get(&url, Some(ALPHA_KEY)).await });
        mock.wait_for_count(1).await;
        let shutdown = tokio::spawn(gw.shutdown());

        // A load balancer's probe, on a new connection each time, until it sees the drain.
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let probe = HttpClient::http1()
                    .send(request("GET", &readyz).body(empty_body()).unwrap())
                    .await;
                match probe {
                    Ok(resp) if resp.status == 503 => return Ok(resp),
                    Ok(resp) if resp.status == 200 => tokio::task::yield_now().await,
                    Ok(resp) => return Err(format!("unexpected {}: {}", resp.status, resp.text())),
                    Err(error) => {
                        return Err(format!(
                            "the admin listener stopped answering while a request was still \
                             draining (probe error: {error})"
                        ))
                    }
                }
            }
        })
        .await
        .expect("readyz never turned 503");
        gate.open();
        let resp = seen.unwrap_or_else(|why| panic!("{why}"));
        assert_eq!(resp.json()["status"], "unavailable");

        assert_eq!(in_flight.await.unwrap().status, 200);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown returns")
            .unwrap();
    })
    .await
}
