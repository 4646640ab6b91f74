//! TLS both ways: an HTTPS upstream trusted through `upstream.ca_file` (HTTP/2 by ALPN), and TLS
//! termination on the client listener for HTTP/1.1 and HTTP/2 clients.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::Version;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_extra_ca_is_reached_over_http2() {
    bounded(20, async {
        let ca = TestCa::new();
        let mock = MockUpstream::start_tls(&ca, |_| Reply::fixture()).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                extra_roots: vec![ca.ca_der.clone()],
                ..Options::default()
            },
        )
        .await;
        // HTTP/2 to the gateway too: one client connection, so both requests are served by one
        // thread and its upstream pool (a pooled HTTP/1.1 client may open a second connection).
        let client = HttpClient::h2c();
        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"tls"}"#,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), FIXTURE);
        let resp = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
        assert_eq!(resp.status, 200);

        let received = mock.received();
        assert_eq!(received.len(), 2);
        for got in &received {
            assert_eq!(got.version, Version::HTTP_2, "ALPN should pick h2");
            assert_eq!(
                got.header("authorization"),
                Some(format!("Bearer {UPSTREAM_KEY}").as_str())
            );
        }
        assert_eq!(&received[0].body[..], br#"{"label":"tls"}"#);
        assert_eq!(
            received[0].uri.path_and_query().unwrap().as_str(),
            tracking_link_path(ACCOUNT)
        );
        // One multiplexed connection serves both.
        assert_eq!(received[0].conn, received[1].conn);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_untrusted_certificate_is_502() {
    bounded(20, async {
        let ca = TestCa::new();
        let mock = MockUpstream::start_tls(&ca, |_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let resp = HttpClient::http1()
            .get(&gw.url("/api/whoami"), Some(ALPHA_KEY))
            .await;
        assert_gateway_error(&resp, 502, "upstream_unavailable");
        assert_eq!(mock.count(), 0, "no request over an untrusted connection");
        assert!(!resp.everything().contains(UPSTREAM_KEY));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_different_cas_certificate_is_502() {
    bounded(20, async {
        let ca = TestCa::new();
        let other = TestCa::new();
        let mock = MockUpstream::start_tls(&ca, |_| Reply::fixture()).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                extra_roots: vec![other.ca_der.clone()],
                ..Options::default()
            },
        )
        .await;
        let resp = HttpClient::http1()
            .get(&gw.url("/api/whoami"), Some(ALPHA_KEY))
            .await;
        assert_gateway_error(&resp, 502, "upstream_unavailable");
        assert_eq!(mock.count(), 0);
    })
    .await
}

async fn tls_terminating_gateway(ca: &TestCa) -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(|_| Reply::fixture()).await;
    let gw = TestGateway::start(
        &mock.base_url(),
        Options {
            server_tls: Some(ca.tls_settings()),
            ..Options::default()
        },
    )
    .await;
    (mock, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_terminates_tls_for_http1_clients() {
    bounded(20, async {
        let ca = TestCa::new();
        let (mock, gw) = tls_terminating_gateway(&ca).await;
        let url = gw.url(&tracking_link_path(ACCOUNT));
        assert!(url.starts_with("https://"));
        let resp = HttpClient::https(&ca, Alpn::Http1)
            .call("PUT", &url, ALPHA_KEY, r#"{"label":"over tls"}"#)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.version, Version::HTTP_11);
        assert_eq!(resp.text(), FIXTURE);
        assert_eq!(&mock.received()[0].body[..], br#"{"label":"over tls"}"#);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_terminates_tls_for_http2_clients() {
    bounded(20, async {
        let ca = TestCa::new();
        let (mock, gw) = tls_terminating_gateway(&ca).await;
        let client = HttpClient::https(&ca, Alpn::H2);
        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"h2"}"#,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.version, Version::HTTP_2);
        // Gateway errors over h2 + TLS are the same JSON.
        let resp = client.get(&gw.url("/api/whoami"), None).await;
        assert_eq!(resp.version, Version::HTTP_2);
        assert_gateway_error(&resp, 401, "unauthenticated");
        assert_eq!(mock.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_refuses_clients_that_do_not_trust_its_certificate() {
    bounded(20, async {
        let ca = TestCa::new();
        let other = TestCa::new();
        let (mock, gw) = tls_terminating_gateway(&ca).await;
        let result = HttpClient::https(&other, Alpn::Http1)
            .send(
                request("GET", &gw.url("/api/whoami"))
                    .header("authorization", bearer(ALPHA_KEY))
                    .body(empty_body())
                    .unwrap(),
            )
            .await;
        assert!(result.is_err(), "handshake should fail: {result:?}");
        // A plain-text request on the TLS port is not served either.
        let resp = HttpClient::http1()
            .send(
                request("GET", &format!("http://{}/api/whoami", gw.client_addr))
                    .header("authorization", bearer(ALPHA_KEY))
                    .body(empty_body())
                    .unwrap(),
            )
            .await;
        assert!(resp.is_err(), "plain HTTP on the TLS port: {resp:?}");
        assert_eq!(mock.count(), 0);
    })
    .await
}
