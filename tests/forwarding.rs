//! Forwarding (SPEC §5): what the upstream receives, and what the client gets back.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_upstream_key_and_never_the_client_key() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();

        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"x"}"#,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = client
            .get(&gw.url("/api/whoami?x=1"), Some(ALPHA_KEY))
            .await;
        assert_eq!(resp.status, 200);

        let received = mock.received();
        assert_eq!(received.len(), 2);
        for req in &received {
            let auths: Vec<_> = req.headers.get_all("authorization").iter().collect();
            assert_eq!(auths.len(), 1, "exactly one Authorization header");
            assert_eq!(auths[0], &format!("Bearer {UPSTREAM_KEY}"));
            let everything = req.everything();
            assert!(
                !everything.contains(ALPHA_KEY),
                "client key reached the upstream: {everything}"
            );
            assert!(!everything.contains("ofgw_"), "{everything}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_query_end_to_end_headers_and_body_arrive_intact() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(201, r#"{"ok":true}"#)).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let path_and_query =
            "/api/acct_abc/chats/12345/messages?limit=10&offset=20&fresh=true&q=a%20b&empty=";
        let body = r#"{"text":"hello","media":[1,2,3],"nested":{"k":"v"}}"#;
        let req = request("POST", &gw.url(path_and_query))
            .header("authorization", bearer(ALPHA_KEY))
            .header("content-type", "application/json; charset=utf-8")
            .header("idempotency-key", "idem-7f3a")
            .header("if-none-match", "\"etag-123\"")
            .header("x-custom-trace", "abc; def")
            .header("accept", "application/json")
            .header("user-agent", "onlyfans-sdk-test/1.0")
            .body(full_body(body))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.json(), serde_json::json!({"ok": true}));

        let received = mock.received();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert_eq!(got.method, "POST");
        assert_eq!(got.path_and_query(), path_and_query);
        assert_eq!(
            got.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(got.header("idempotency-key"), Some("idem-7f3a"));
        assert_eq!(got.header("if-none-match"), Some("\"etag-123\""));
        assert_eq!(got.header("x-custom-trace"), Some("abc; def"));
        assert_eq!(got.header("accept"), Some("application/json"));
        assert_eq!(got.header("user-agent"), Some("onlyfans-sdk-test/1.0"));
        assert_eq!(got.header("host"), Some(mock.addr.to_string().as_str()));
        assert!(got.body_complete);
        assert_eq!(&got.body[..], body.as_bytes());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let raw = format!(
            "GET /api/whoami HTTP/1.1\r\n\
             Host: gateway.test\r\n\
             Authorization: Bearer {ALPHA_KEY}\r\n\
             Connection: close, X-Hop-Private\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Upgrade: websocket\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             Proxy-Connection: keep-alive\r\n\
             X-Hop-Private: secret-hop\r\n\
             X-End-To-End: kept\r\n\
             \r\n"
        );
        let resp = raw_request(gw.client_addr, raw.as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");

        let received = mock.received();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        for name in [
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "x-hop-private",
        ] {
            assert!(
                !got.headers.contains_key(name),
                "{name} reached the upstream: {:?}",
                got.headers
            );
        }
        // The gateway's own connection to the upstream may say keep-alive, never the client's.
        if let Some(connection) = got.header("connection") {
            assert!(
                !connection.to_ascii_lowercase().contains("x-hop-private"),
                "client's Connection header forwarded: {connection}"
            );
        }
        assert_eq!(got.header("x-end-to-end"), Some("kept"));
        assert!(!got.everything().contains("dXNlcjpwYXNz"));
    })
    .await
}

/// One upstream answer, and how the client must see it.
async fn assert_passed_back_unchanged(reply: fn() -> Reply, status: u16, body: &str) {
    let mock = MockUpstream::start(move |_| reply()).await;
    let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
    let client = HttpClient::http1();
    let resp = client
        .get(
            &gw.url("/api/fansly/fansly_acct_123/media/42"),
            Some(ALPHA_KEY),
        )
        .await;
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(resp.text(), body);
    assert_eq!(mock.count(), 1, "exactly one upstream request (no retry)");
    for (name, value) in FIXTURE_HEADERS {
        assert_eq!(resp.header(name), Some(value), "{name} on a {status}");
    }
    assert_eq!(resp.header("x-upstream-custom"), Some("yes"));
    assert!(resp.header("x-request-id").is_some());
}

fn with_fixture_headers(mut reply: Reply) -> Reply {
    for (name, value) in FIXTURE_HEADERS {
        reply = reply.header(name, value);
    }
    reply.header("x-upstream-custom", "yes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_comes_back_unchanged() {
    bounded(20, async {
        assert_passed_back_unchanged(
            || with_fixture_headers(Reply::json(200, FIXTURE)),
            200,
            FIXTURE,
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_comes_back_unchanged() {
    bounded(20, async {
        assert_passed_back_unchanged(
            || with_fixture_headers(Reply::json(201, r#"{"data":{"id":"1"}}"#)),
            201,
            r#"{"data":{"id":"1"}}"#,
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_302_is_passed_back_not_followed() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| {
            Reply::status(302)
                .header("location", "https://cdn.example.test/media/42.jpg?sig=abc")
                .header("x-upstream-custom", "yes")
        })
        .await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let resp = HttpClient::http1()
            .get(
                &gw.url("/api/fansly/fansly_acct_123/media/42/download"),
                Some(ALPHA_KEY),
            )
            .await;
        assert_eq!(resp.status, 302);
        assert_eq!(
            resp.header("location"),
            Some("https://cdn.example.test/media/42.jpg?sig=abc")
        );
        assert_eq!(resp.header("x-upstream-custom"), Some("yes"));
        assert!(resp.body.is_empty());
        assert_eq!(mock.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_comes_back_without_body_and_with_its_credit_headers() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| {
            with_fixture_headers(Reply::status(304)).header("etag", "\"etag-123\"")
        })
        .await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let req = request("GET", &gw.url("/api/fansly/fansly_acct_123/tracking-links"))
            .header("authorization", bearer(ALPHA_KEY))
            .header("if-none-match", "\"etag-123\"")
            .body(empty_body())
            .unwrap();
        let resp = HttpClient::http1().send(req).await.unwrap();
        assert_eq!(resp.status, 304);
        assert!(resp.body.is_empty());
        assert_eq!(resp.header("etag"), Some("\"etag-123\""));
        for (name, value) in FIXTURE_HEADERS {
            assert_eq!(resp.header(name), Some(value), "{name} on a 304");
        }
        assert_eq!(
            mock.received()[0].header("if-none-match"),
            Some("\"etag-123\"")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_404_comes_back_unchanged() {
    bounded(20, async {
        assert_passed_back_unchanged(
            || with_fixture_headers(Reply::json(404, r#"{"error":"Not found."}"#)),
            404,
            r#"{"error":"Not found."}"#,
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_500_comes_back_unchanged() {
    bounded(20, async {
        assert_passed_back_unchanged(
            || with_fixture_headers(Reply::json(500, r#"{"error":"Server Error"}"#)),
            500,
            r#"{"error":"Server Error"}"#,
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_client_request_id_is_echoed_and_forwarded() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let id = "req-2024.06:abc_123";
        let req = request("GET", &gw.url("/api/whoami"))
            .header("authorization", bearer(ALPHA_KEY))
            .header("x-request-id", id)
            .body(empty_body())
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-request-id"), Some(id));
        assert_eq!(mock.received()[0].header("x-request-id"), Some(id));

        // Also on the gateway's own errors.
        let req = request("GET", &gw.url("/api/whoami"))
            .header("x-request-id", id)
            .body(empty_body())
            .unwrap();
        let resp = client.send(req).await.unwrap();
        let body = assert_gateway_error(&resp, 401, "unauthenticated");
        assert_eq!(body["request_id"], id);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insane_client_request_id_is_replaced() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let long = "a".repeat(200);
        for insane in ["has spaces in it", long.as_str()] {
            let req = request("GET", &gw.url("/api/whoami"))
                .header("authorization", bearer(ALPHA_KEY))
                .header("x-request-id", insane)
                .body(empty_body())
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_eq!(resp.status, 200);
            let id = resp.header("x-request-id").expect("x-request-id");
            assert_ne!(id, insane);
            assert!(!id.is_empty() && id.len() <= 128, "{id}");
            let forwarded = mock.received().last().unwrap().clone();
            assert_eq!(forwarded.header("x-request-id"), Some(id));
            assert_eq!(forwarded.headers.get_all("x-request-id").iter().count(), 1);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_gets_a_request_id_and_they_differ() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let a = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
        let b = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
        let c = client.get(&gw.url("/healthz"), None).await;
        let d = client.get(&gw.url("/nope"), None).await;
        let ids: Vec<_> = [&a, &b, &c, &d]
            .iter()
            .map(|r| r.header("x-request-id").expect("x-request-id").to_owned())
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 4, "{ids:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_one_connection_reuse_one_upstream_connection() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        // One client connection, kept alive (a pooled client may open a second one, which the
        // gateway may serve on another thread, with that thread's own upstream pool).
        let stream = tokio::net::TcpStream::connect(gw.client_addr)
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        for i in 0..5 {
            let request = http::Request::get(format!("/api/whoami?n={i}"))
                .header(http::header::HOST, gw.client_addr.to_string())
                .header(http::header::AUTHORIZATION, format!("Bearer {ALPHA_KEY}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.ready().await.unwrap();
            let resp = sender.send_request(request).await.unwrap();
            assert_eq!(resp.status(), 200);
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
        }
        let conns: Vec<usize> = mock.received().iter().map(|r| r.conn).collect();
        assert_eq!(conns, vec![1; 5], "upstream connections used: {conns:?}");
        assert_eq!(mock.connections(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_link_update_forwards_the_exact_bytes_the_client_sent() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        // Odd spacing, key order, unicode escapes and unknown fields: all must survive.
        let body = "{ \"description\" : null,\n  \"label\":\"Twitter bio \\u00e9 (updated)\",\
                    \"unknown_field\": {\"nested\": [1, 2.50, true]}, \"x\":1 }";
        let resp = HttpClient::http1()
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                body,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), FIXTURE);
        let received = mock.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "PUT");
        assert_eq!(received[0].path_and_query(), tracking_link_path(ACCOUNT));
        assert_eq!(&received[0].body[..], body.as_bytes());
        assert_eq!(received[0].header("content-type"), Some("application/json"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_are_forwarded_too() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let resp = HttpClient::h2c()
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"h2"}"#,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.version, http::Version::HTTP_2);
        assert_eq!(resp.text(), FIXTURE);
        let got = &mock.received()[0];
        assert_eq!(&got.body[..], br#"{"label":"h2"}"#);
        assert_eq!(
            got.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
    })
    .await
}

/// A client's claims about where it is: every proxy header, `X-Forwarded-For` twice.
const SPOOFED: [(&str, &str); 6] = [
    ("forwarded", "for=203.0.113.9;host=evil.example;proto=https"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-for", "198.51.100.1"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("x-real-ip", "203.0.113.9"),
];

/// `GET /api/whoami` carrying [`SPOOFED`], over `client`.
async fn spoofing_get(client: &HttpClient, url: &str) -> Resp {
    let mut req = request("GET", url).header("authorization", bearer(ALPHA_KEY));
    for (name, value) in SPOOFED {
        req = req.header(name, value);
    }
    client.send(req.body(empty_body()).unwrap()).await.unwrap()
}

#[track_caller]
fn assert_no_claim_of_the_client_arrived(got: &Recorded) {
    let everything = got.everything();
    for spoofed in ["203.0.113.9", "198.51.100.1", "evil.example"] {
        assert!(
            !everything.contains(spoofed),
            "{spoofed} arrived: {everything}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_forwarding_headers_are_stripped_by_default() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let url = gw.url("/api/whoami");
        for client in [HttpClient::http1(), HttpClient::h2c()] {
            assert_eq!(spoofing_get(&client, &url).await.status, 200);
        }
        let raw = format!(
            "GET /api/whoami HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
             FORWARDED: for=203.0.113.9\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.1\r\n\
             x-real-ip: 203.0.113.9\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            raw_request(gw.client_addr, raw.as_bytes()).await.status,
            200
        );

        let received = mock.received();
        assert_eq!(received.len(), 3);
        for got in &received {
            for (name, _) in SPOOFED {
                assert!(!got.headers.contains_key(name), "{name}: {:?}", got.headers);
            }
            assert_no_claim_of_the_client_arrived(got);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replace_the_upstream_is_told_the_address_and_scheme_the_gateway_saw() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
        let ca = TestCa::new();
        for (tls, proto) in [(false, "http"), (true, "https")] {
            let options = Options {
                forwarded_headers: ForwardedHeaders::Replace,
                server_tls: tls.then(|| ca.tls_settings()),
                ..Options::default()
            };
            let gw = TestGateway::start(&mock.base_url(), options).await;
            let clients = if tls {
                vec![
                    HttpClient::https(&ca, Alpn::Http1),
                    HttpClient::https(&ca, Alpn::H2),
                ]
            } else {
                vec![HttpClient::http1(), HttpClient::h2c()]
            };
            let before = mock.count();
            for client in &clients {
                assert_eq!(
                    spoofing_get(client, &gw.url("/api/whoami")).await.status,
                    200
                );
            }
            let received = mock.received();
            assert_eq!(received.len(), before + clients.len());
            for got in &received[before..] {
                let all = |name| got.headers.get_all(name).iter().collect::<Vec<_>>();
                // The tests connect from 127.0.0.1: the one address the gateway saw.
                assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{:?}", got.headers);
                assert_eq!(all("x-forwarded-proto"), [proto]);
                let forwarded = format!("for=127.0.0.1;proto={proto}");
                assert_eq!(all("forwarded"), [forwarded.as_str()]);
                assert!(all("x-forwarded-host").is_empty());
                assert!(all("x-real-ip").is_empty());
                assert_no_claim_of_the_client_arrived(got);
            }
            gw.shutdown().await;
        }
    })
    .await
}
