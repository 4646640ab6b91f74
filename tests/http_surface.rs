//! The client listener's HTTP surface (SPEC §5): one test per status row, each checking the JSON
//! error (`error`, `code`, `request_id` = `x-request-id`) and that a refused request never
//! reached the upstream.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

async fn setup() -> (MockUpstream, TestGateway, HttpClient) {
    setup_with(Options::default()).await
}

async fn setup_with(options: Options) -> (MockUpstream, TestGateway, HttpClient) {
    let mock = MockUpstream::start(|_| Reply::fixture()).await;
    let gw = TestGateway::start(&mock.base_url(), options).await;
    (mock, gw, HttpClient::http1())
}

#[track_caller]
fn assert_nothing_forwarded(mock: &MockUpstream) {
    let received = mock.received();
    assert!(
        received.is_empty(),
        "the upstream received {} request(s): {:?}",
        received.len(),
        received
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect::<Vec<_>>()
    );
}

/// The raw-socket version of [`assert_gateway_error`].
#[track_caller]
fn assert_raw_gateway_error(resp: &RawResp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    let body = resp.json();
    assert_eq!(body["code"], code, "{body}");
    let id = resp.header("x-request-id").expect("x-request-id");
    assert_eq!(body["request_id"], id);
}

// --- 200 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_200_without_auth_and_without_the_upstream() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client.get(&gw.url("/healthz"), None).await;
        assert_eq!(resp.status, 200);
        assert!(resp.header("x-request-id").is_some());
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 400 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_refused_with_400_and_never_forwarded() {
    bounded(20, async {
        let (mock, gw, _) = setup().await;
        // Through a raw socket: a client library would normalize some of these away.
        for path in [
            "/api/../admin",
            "/api/./whoami",
            "/api/fansly/../whoami",
            "/api/%2e%2e/whoami",
            "/api/%2E%2E/whoami",
            "/api/.%2e/whoami",
            "/api/%2e/whoami",
            "/api/fansly/fansly_acct_123/..",
        ] {
            let raw = format!(
                "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nConnection: close\r\n\r\n"
            );
            let resp = raw_request(gw.client_addr, raw.as_bytes()).await;
            assert_raw_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_with_400() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for path in [
            "/api/fansly%2Ffansly_acct_123/tracking-links",
            "/api/fansly/a%2fb/tracking-links",
            "/api/fansly/a%5Cb/tracking-links",
        ] {
            let resp = client.get(&gw.url(path), Some(ALPHA_KEY)).await;
            assert_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslashes_are_refused_with_400() {
    bounded(20, async {
        let (mock, gw, _) = setup().await;
        for path in ["/api\\whoami", "/api/fansly\\..\\whoami", "/api/whoami\\"] {
            let raw = format!(
                "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nConnection: close\r\n\r\n"
            );
            let resp = raw_request(gw.client_addr, raw.as_bytes()).await;
            assert_eq!(resp.status, 400, "{path}: {resp:?}");
            // A backslash is legal on the wire for hyper, so the gateway's JSON error answers.
            assert_raw_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_segments_are_refused_with_400() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for path in [
            "/api//whoami",
            "/api/fansly//tracking-links",
            "/api/whoami/",
        ] {
            let resp = client.get(&gw.url(path), Some(ALPHA_KEY)).await;
            assert_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_with_400() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        // Percent-encoded: the gateway's own check.
        for path in ["/api/who%00ami", "/api/who%0aami", "/api/who%0Dami", "/api/who%7Fami"] {
            let resp = client.get(&gw.url(path), Some(ALPHA_KEY)).await;
            assert_gateway_error(&resp, 400, "bad_request");
        }
        // Literal control bytes on the wire (a `Uri` refuses them).
        for byte in [0x01u8, 0x7f, b'\t'] {
            let mut raw = b"GET /api/who".to_vec();
            raw.push(byte);
            raw.extend_from_slice(
                format!("ami HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let resp = raw_request(gw.client_addr, &raw).await;
            assert_eq!(resp.status, 400, "byte {byte:#x}: {resp:?}");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_on_the_tracking_link_update_is_400_and_costs_nothing() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for body in [
            r#"{"label": "x""#,
            "label=x",
            "{'label': 'x'}",
            // A lone surrogate is not Unicode, even inside a field the gateway does not read.
            r#"{"label": "x", "extra": "\udc00"}"#,
        ] {
            let resp = client
                .call(
                    "PUT",
                    &gw.url(&tracking_link_path(ACCOUNT)),
                    ALPHA_KEY,
                    body,
                )
                .await;
            assert_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

/// Pairs of `Authorization` values a request may carry: whichever of the two a reader took, it
/// would disagree with another reader that took the other.
fn two_authorizations() -> [[String; 2]; 3] {
    [
        [bearer(ALPHA_KEY), bearer(ACCOUNTS_KEY)],
        [bearer(ALPHA_KEY), bearer("ofgw_not_a_key")],
        ["Basic b2ZndzphYmM=".to_owned(), bearer(ALPHA_KEY)],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_over_http1_are_400_and_never_forwarded() {
    bounded(20, async {
        let (mock, gw, _) = setup().await;
        for [first, second] in two_authorizations() {
            let raw = format!(
                "GET /api/whoami HTTP/1.1\r\nHost: gw\r\nAuthorization: {first}\r\n\
                 Authorization: {second}\r\nConnection: close\r\n\r\n"
            );
            let resp = raw_request(gw.client_addr, raw.as_bytes()).await;
            assert_raw_gateway_error(&resp, 400, "bad_request");
            assert!(
                resp.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization"),
                "{resp:?}"
            );
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_over_h2_are_400_and_never_forwarded() {
    bounded(20, async {
        let (mock, gw, _) = setup().await;
        let client = HttpClient::h2c();
        for [first, second] in two_authorizations() {
            let req = request("GET", &gw.url("/api/whoami"))
                .header("authorization", first.as_str())
                .header("authorization", second.as_str())
                .body(empty_body())
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_eq!(resp.version, http::Version::HTTP_2);
            assert_gateway_error(&resp, 400, "bad_request");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 401 -------------------------------------------------------------------------------------

#[track_caller]
fn assert_unauthenticated(resp: &Resp) {
    assert_gateway_error(resp, 401, "unauthenticated");
    let challenge = resp
        .header("www-authenticate")
        .expect("WWW-Authenticate on a 401");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_key_is_401() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client.get(&gw.url("/api/whoami"), None).await;
        assert_unauthenticated(&resp);
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_malformed_authorization_is_401() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for value in [
            "Basic b2ZndzphYmM=".to_owned(),
            "Bearer".to_owned(),
            format!("Token {ALPHA_KEY}"),
            format!("Bearer {ALPHA_KEY} extra"),
            ALPHA_KEY.to_owned(),
        ] {
            let req = request("GET", &gw.url("/api/whoami"))
                .header("authorization", value.as_str())
                .body(empty_body())
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_unauthenticated(&resp);
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_401() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client.get(&gw.url("/api/whoami"), Some(UNKNOWN_KEY)).await;
        assert_unauthenticated(&resp);
        // The upstream key is not a gateway key either.
        let resp = client.get(&gw.url("/api/whoami"), Some(UPSTREAM_KEY)).await;
        assert_unauthenticated(&resp);
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_clients_key_is_401() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client.get(&gw.url("/api/whoami"), Some(DISABLED_KEY)).await;
        assert_unauthenticated(&resp);
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 403 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_outside_allow_is_403() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        // `scoped` may only update tracking links and GET under /api/fansly/.
        let resp = client.get(&gw.url("/api/whoami"), Some(SCOPED_KEY)).await;
        assert_gateway_error(&resp, 403, "forbidden");
        let resp = client
            .call(
                "DELETE",
                &gw.url(&tracking_link_path(ACCOUNT)),
                SCOPED_KEY,
                "",
            )
            .await;
        assert_gateway_error(&resp, 403, "forbidden");
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_inside_allow_and_accounts_are_forwarded() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                SCOPED_KEY,
                r#"{"label":"ok"}"#,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = client
            .get(
                &gw.url(&format!("/api/fansly/{ACCOUNT}/tracking-links/7/stats")),
                Some(SCOPED_KEY),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(mock.count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_outside_accounts_is_403() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for key in [SCOPED_KEY, ACCOUNTS_KEY] {
            let resp = client
                .call(
                    "PUT",
                    &gw.url(&tracking_link_path(OTHER_ACCOUNT)),
                    key,
                    r#"{"label":"x"}"#,
                )
                .await;
            assert_gateway_error(&resp, 403, "forbidden");
            let resp = client
                .get(
                    &gw.url(&format!("/api/fansly/{OTHER_ACCOUNT}/tracking-links")),
                    Some(key),
                )
                .await;
            assert_gateway_error(&resp, 403, "forbidden");
        }
        // The account may not be smuggled in percent-encoded either.
        let resp = client
            .get(
                &gw.url("/api/fansly/fansly%5Facct%5F999/tracking-links"),
                Some(ACCOUNTS_KEY),
            )
            .await;
        assert_gateway_error(&resp, 403, "forbidden");
        // Nor by spelling the words around it percent-encoded, which the upstream decodes to the
        // same route (found by fuzzing the route template).
        for path in [
            "/api/%66ansly/fansly_acct_999/tracking-links",
            "/api/acct%5Fother/chats",
            "/api/%61cct_other/chats",
        ] {
            let resp = client.get(&gw.url(path), Some(ACCOUNTS_KEY)).await;
            assert_gateway_error(&resp, 403, "forbidden");
        }
        assert_nothing_forwarded(&mock);

        // The same client on its own account goes through.
        let resp = client
            .get(
                &gw.url(&format!("/api/fansly/{ACCOUNT}/tracking-links")),
                Some(ACCOUNTS_KEY),
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(mock.count(), 1);
    })
    .await
}

// --- 404 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_api_are_404() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for path in ["/", "/foo", "/apix", "/api", "/apix/whoami", "/metrics"] {
            for key in [None, Some(ALPHA_KEY)] {
                let resp = client.get(&gw.url(path), key).await;
                assert_gateway_error(&resp, 404, "not_found");
            }
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 405 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_options_on_api_are_405_with_allow() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for method in ["HEAD", "OPTIONS", "TRACE", "CONNECTX"] {
            let req = request(method, &gw.url("/api/whoami"))
                .header("authorization", bearer(ALPHA_KEY))
                .body(empty_body())
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_eq!(resp.status, 405, "{method}");
            let allow = resp.header("allow").expect("Allow on a 405");
            for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                assert!(allow.contains(m), "{allow}");
            }
            assert!(!allow.contains("HEAD") && !allow.contains("OPTIONS"));
            if method == "HEAD" {
                assert!(resp.body.is_empty());
                assert!(resp.header("x-request-id").is_some());
            } else {
                assert_gateway_error(&resp, 405, "method_not_allowed");
            }
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 413 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_content_length_over_the_limit_is_413() {
    bounded(20, async {
        let (mock, gw, client) = setup_with(Options {
            max_body_bytes: 1024,
            ..Options::default()
        })
        .await;
        let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media"))
            .header("authorization", bearer(ALPHA_KEY))
            .header("content-type", "application/octet-stream")
            .body(full_body(vec![b'a'; 1025]))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_gateway_error(&resp, 413, "payload_too_large");
        // Exactly at the limit is fine.
        let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media"))
            .header("authorization", bearer(ALPHA_KEY))
            .body(full_body(vec![b'a'; 1024]))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 200);
        let received = mock.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].body.len(), 1024);
    })
    .await
}

/// A chunked HTTP/1.1 upload of `total` counting bytes, as raw bytes.
fn chunked_upload(path: &str, total: usize, chunk: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    let mut sent = 0;
    while sent < total {
        let n = chunk.min(total - sent);
        raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        raw.extend(std::iter::repeat_n(b'u', n));
        raw.extend_from_slice(b"\r\n");
        sent += n;
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

#[track_caller]
fn assert_no_complete_upload(mock: &MockUpstream, limit: u64) {
    for got in mock.received() {
        assert!(
            !got.body_complete,
            "the upstream received a complete request of {} bytes",
            got.body.len()
        );
        assert!(got.body.len() as u64 <= limit, "{}", got.body.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_past_the_limit_is_413_and_never_completes_upstream() {
    bounded(20, async {
        let limit = 64 * 1024;
        let (mock, gw, _) = setup_with(Options {
            max_body_bytes: limit,
            ..Options::default()
        })
        .await;
        let raw = chunked_upload(
            "/api/fansly/fansly_acct_123/media",
            4 * limit as usize,
            8 * 1024,
        );
        let resp = raw_request(gw.client_addr, &raw).await;
        assert_raw_gateway_error(&resp, 413, "payload_too_large");
        assert_no_complete_upload(&mock, limit);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_growing_past_the_limit_is_413_and_never_completes_upstream() {
    bounded(20, async {
        let limit = 64 * 1024;
        let (mock, gw, _) = setup_with(Options {
            max_body_bytes: limit,
            ..Options::default()
        })
        .await;
        let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media"))
            .header("authorization", bearer(ALPHA_KEY))
            .header("content-type", "application/octet-stream")
            .body(counting_body(4 * limit, 8 * 1024))
            .unwrap();
        let resp = HttpClient::h2c().send(req).await.expect("a response");
        assert_gateway_error(&resp, 413, "payload_too_large");
        assert_no_complete_upload(&mock, limit);
    })
    .await
}

/// An SDK's HTTP/1.1 client is still writing its upload when the gateway answers 413 (a declared
/// `Content-Length` over the limit, refused at once, or a chunked body cut at the limit). It must
/// get to read the 413, not a broken pipe it would retry as a network error. The outcome is a
/// race, so the scenario runs several times and every attempt must see the 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_still_sending_its_upload_gets_the_413_rather_than_a_broken_pipe() {
    bounded(60, async {
        let limit = 64 * 1024;
        let (mock, gw, client) = setup_with(Options {
            max_body_bytes: limit,
            ..Options::default()
        })
        .await;
        let mut failures = Vec::new();
        for attempt in 0..20 {
            let body = if attempt % 2 == 0 {
                full_body(vec![b'a'; 8 * 1024 * 1024])
            } else {
                counting_body(4 * limit, 8 * 1024)
            };
            let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media"))
                .header("authorization", bearer(ALPHA_KEY))
                .header("content-type", "application/octet-stream")
                .body(body)
                .unwrap();
            match client.send(req).await {
                Ok(resp) => {
                    assert_gateway_error(&resp, 413, "payload_too_large");
                }
                Err(error) => failures.push(format!("attempt {attempt}: {error:?}")),
            }
        }
        assert_no_complete_upload(&mock, limit);
        assert!(
            failures.is_empty(),
            "{} of 20 uploads got an error instead of the 413:\n{}",
            failures.len(),
            failures.join("\n")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_tracking_link_update_over_the_limit_is_413() {
    bounded(20, async {
        let (mock, gw, _) = setup_with(Options {
            max_body_bytes: 256,
            ..Options::default()
        })
        .await;
        let mut json = String::from(r#"{"label":""#);
        json.push_str(&"x".repeat(1000));
        json.push_str(r#""}"#);
        let chunk1 = &json[..100];
        let chunk2 = &json[100..];
        let raw = format!(
            "PUT {} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {:x}\r\n{chunk1}\r\n{:x}\r\n{chunk2}\r\n0\r\n\r\n",
            tracking_link_path(ACCOUNT),
            chunk1.len(),
            chunk2.len(),
        );
        let resp = raw_request(gw.client_addr, raw.as_bytes()).await;
        assert_raw_gateway_error(&resp, 413, "payload_too_large");
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 415 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_link_update_without_a_json_content_type_is_415() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for content_type in [
            Some("text/plain"),
            None,
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut builder = request("PUT", &gw.url(&tracking_link_path(ACCOUNT)))
                .header("authorization", bearer(ALPHA_KEY));
            if let Some(ct) = content_type {
                builder = builder.header("content-type", ct);
            }
            let resp = client
                .send(builder.body(full_body(r#"{"label":"x"}"#)).unwrap())
                .await
                .unwrap();
            assert_gateway_error(&resp, 415, "unsupported_media_type");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 422 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_label_is_rejected_before_any_credit_is_spent() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for body in [r#"{}"#, r#"{"description":"d"}"#, r#"{"label":null}"#] {
            let resp = client
                .call(
                    "PUT",
                    &gw.url(&tracking_link_path(ACCOUNT)),
                    ALPHA_KEY,
                    body,
                )
                .await;
            let json = assert_gateway_error(&resp, 422, "validation_failed");
            let errors = json["errors"].as_object().expect("errors object");
            assert_eq!(errors.keys().collect::<Vec<_>>(), ["label"], "{json}");
            assert!(errors["label"][0].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_spelling_of_the_update_route_is_validated_too() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for path in [
            format!("/api/fansly/{ACCOUNT}/tracking%2Dlinks/7"),
            format!("/api/%66ansly/{ACCOUNT}/tracking-links/7"),
        ] {
            let resp = client.call("PUT", &gw.url(&path), ALPHA_KEY, "{}").await;
            assert_gateway_error(&resp, 422, "validation_failed");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_non_string_label_is_422() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        for body in [
            r#"{"label":""}"#,
            r#"{"label":"   "}"#,
            r#"{"label":42}"#,
            r#"{"label":["x"]}"#,
        ] {
            let resp = client
                .call(
                    "PUT",
                    &gw.url(&tracking_link_path(ACCOUNT)),
                    ALPHA_KEY,
                    body,
                )
                .await;
            let json = assert_gateway_error(&resp, 422, "validation_failed");
            let errors = json["errors"].as_object().expect("errors object");
            assert_eq!(
                errors.keys().collect::<Vec<_>>(),
                ["label"],
                "{body}: {json}"
            );
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_string_description_is_422_and_both_fields_are_named() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"ok","description":5}"#,
            )
            .await;
        let json = assert_gateway_error(&resp, 422, "validation_failed");
        let errors = json["errors"].as_object().expect("errors");
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["description"]);

        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":7,"description":{"a":1}}"#,
            )
            .await;
        let json = assert_gateway_error(&resp, 422, "validation_failed");
        let errors = json["errors"].as_object().expect("errors");
        let mut fields: Vec<_> = errors.keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["description", "label"]);
        assert_nothing_forwarded(&mock);

        // null description is allowed.
        let resp = client
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"ok","description":null}"#,
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(mock.count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_that_is_not_an_object_is_422() {
    bounded(20, async {
        let (mock, gw, client) = setup().await;
        // `["x"]` is the array a derived struct would also accept: still not an object.
        for body in [
            "[]",
            r#""label""#,
            "42",
            "null",
            r#"["x"]"#,
            r#"["x", "d"]"#,
        ] {
            let resp = client
                .call(
                    "PUT",
                    &gw.url(&tracking_link_path(ACCOUNT)),
                    ALPHA_KEY,
                    body,
                )
                .await;
            assert_gateway_error(&resp, 422, "validation_failed");
        }
        assert_nothing_forwarded(&mock);
    })
    .await
}

// --- 502 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_upstream_port_is_502() {
    bounded(20, async {
        let gw = TestGateway::start(&closed_port_url().await, Options::default()).await;
        let resp = HttpClient::http1()
            .get(&gw.url("/api/whoami"), Some(ALPHA_KEY))
            .await;
        assert_gateway_error(&resp, 502, "upstream_unavailable");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_without_answering_is_502() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::Close).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let resp = HttpClient::http1()
            .call(
                "PUT",
                &gw.url(&tracking_link_path(ACCOUNT)),
                ALPHA_KEY,
                r#"{"label":"x"}"#,
            )
            .await;
        assert_gateway_error(&resp, 502, "upstream_unavailable");
        assert!(mock.count() >= 1);
    })
    .await
}

// --- 503 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_concurrent_requests_is_503_at_once() {
    bounded(20, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                max_concurrent_requests: 1,
                ..Options::default()
            },
        )
        .await;
        let client = HttpClient::http1();
        let first_url = gw.url("/api/whoami?first=1");
        let first = tokio::spawn({
            let client = client.clone();
            async move { client.get(&first_url, Some(ALPHA_KEY)).await }
        });
        mock.wait_for_count(1).await;

        // Well under the upstream timeout: the answer must not wait for a slot.
        let second = tokio::time::timeout(
            Duration::from_secs(3),
            client.get(&gw.url("/api/whoami?second=1"), Some(ALPHA_KEY)),
        )
        .await
        .expect("503 at once, not queued");
        assert_gateway_error(&second, 503, "overloaded");

        gate.open();
        let first = first.await.unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(
            mock.count(),
            1,
            "the shed request never reached the upstream"
        );

        // The slot is free again.
        let third = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
        assert_eq!(third.status, 200);
    })
    .await
}

// --- 504 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_upstream_timeout_is_504() {
    bounded(20, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                upstream_timeout: Duration::from_millis(300),
                request_timeout: Duration::from_secs(15),
                ..Options::default()
            },
        )
        .await;
        let started = std::time::Instant::now();
        let resp = HttpClient::http1()
            .get(&gw.url("/api/whoami"), Some(ALPHA_KEY))
            .await;
        assert_gateway_error(&resp, 504, "upstream_timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(mock.count(), 1);
        gate.open();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_request_timeout_is_504() {
    bounded(20, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                upstream_timeout: Duration::from_secs(15),
                request_timeout: Duration::from_millis(300),
                ..Options::default()
            },
        )
        .await;
        let resp = HttpClient::http1()
            .get(&gw.url("/api/whoami"), Some(ALPHA_KEY))
            .await;
        assert_gateway_error(&resp, 504, "upstream_timeout");
        gate.open();
    })
    .await
}
