//! The sandbox over real sockets: `serve` on 127.0.0.1:0 and a bare hyper client, with the clock
//! injected so the minute window is moved by hand, never by sleeping.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::clock::ManualClock;
use super::{serve_with_clock, SandboxOptions};

const KEY: &str = "sandbox-key";
const ACCT: &str = "fansly_acct_test1";
const LINK_3: &str = "100000000000000003";
/// A minute boundary, so tests know how far the window has to go.
const T0: u64 = 29_666_667 * 60_000;
const FIXTURE: &str = include_str!("fixtures/update-tracking-link.200.json");

struct Sandbox {
    addr: std::net::SocketAddr,
    clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
}

async fn start(requests_per_minute: u32, starting_balance: u64) -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Arc::new(ManualClock::at(T0 + 5_000));
    let (stop, stopped) = oneshot::channel::<()>();
    let options = SandboxOptions {
        api_key: KEY.into(),
        requests_per_minute,
        starting_balance,
    };
    let task = tokio::spawn(serve_with_clock(listener, options, clock.clone(), async {
        let _ = stopped.await;
    }));
    Sandbox {
        addr,
        clock,
        stop: Some(stop),
        task,
    }
}

impl Sandbox {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("sandbox.test:{}", self.addr.port()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(
            "GET",
            path,
            &[("authorization", "Bearer sandbox-key")],
            None,
        )
        .await
    }

    async fn put(&self, path: &str, body: &str) -> Reply {
        self.send(
            "PUT",
            path,
            &[
                ("authorization", "Bearer sandbox-key"),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
        .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// The object keys of a JSON value, recursively, as dotted paths.
fn key_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            let path = format!("{prefix}{k}");
            out.push(path.clone());
            key_paths(child, &format!("{path}."), out);
        }
    }
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    key_paths(v, "", &mut out);
    out.sort();
    out
}

fn links_path() -> String {
    format!("/api/fansly/{ACCT}/tracking-links")
}

#[tokio::test]
async fn wrong_or_missing_key_gets_the_upstream_style_401() {
    let sb = start(100, 1000).await;
    for auth in [Some("Bearer nope"), Some("sandbox-key"), None] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = sb.send("GET", &links_path(), &headers, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.header("content-type"), "application/json");
        let body = r.json();
        assert!(
            body["error"].as_str().unwrap().starts_with("Unauthorized."),
            "{body}"
        );
    }
    sb.stop().await;
}

#[tokio::test]
async fn update_answers_exactly_the_documented_shape_and_costs_one_credit() {
    let sb = start(100, 1000).await;
    let r = sb
        .put(
            &format!("{}/{LINK_3}", links_path()),
            r#"{"label":"Twitter bio (updated)","description":"Updated description."}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(sorted_keys(&body), sorted_keys(&fixture));
    // Everything but the live figures matches the documented example.
    assert_eq!(body["data"], fixture["data"]);
    assert_eq!(body["_meta"]["_credits"]["used"], 1);
    assert_eq!(body["_meta"]["_credits"]["balance"], 999);
    assert_eq!(body["_meta"]["_credits"]["note"], "Always");
    assert_eq!(body["_meta"]["_cache"], fixture["_meta"]["_cache"]);
    assert_eq!(body["_meta"]["_rate_limits"]["limit_minute"], 100);
    assert_eq!(body["_meta"]["_rate_limits"]["remaining_minute"], 99);
    assert_eq!(r.header("x-ofapi-credits-used"), "1");
    assert_eq!(r.header("x-ofapi-credits-balance"), "999");
    assert_eq!(r.header("x-ofapi-is-cached"), "false");
    assert_eq!(r.header("x-rate-limit-limit-minute"), "100");
    assert_eq!(r.header("x-rate-limit-remaining-minute"), "99");

    let again = sb
        .put(&format!("{}/{LINK_3}", links_path()), r#"{"label":"Bio"}"#)
        .await;
    assert_eq!(again.json()["_meta"]["_credits"]["balance"], 998);
    assert_eq!(again.json()["data"]["description"], "Updated description.");
    sb.stop().await;
}

#[tokio::test]
async fn bad_update_bodies_get_laravel_422_and_unknown_ids_404_without_spending_credits() {
    let sb = start(100, 1000).await;
    let path = format!("{}/{LINK_3}", links_path());
    let r = sb.put(&path, r#"{"description":"only"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "The label field is required.", "errors": {"label": ["The label field is required."]}})
    );
    let r = sb.put(&path, r#"{"label":""}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = sb
        .put(&format!("{}/999", links_path()), r#"{"label":"x"}"#)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
    let r = sb
        .put(
            &format!("/api/fansly/acct_1/tracking-links/{LINK_3}"),
            r#"{"label":"x"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = sb.get("/api/nothing/here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
    let r = sb
        .send(
            "DELETE",
            &path,
            &[("authorization", "Bearer sandbox-key")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let ok = sb.put(&path, r#"{"label":"x"}"#).await;
    assert_eq!(ok.header("x-ofapi-credits-balance"), "999");
    sb.stop().await;
}

#[tokio::test]
async fn past_the_minute_limit_requests_get_429_with_retry_after_and_cost_nothing() {
    let sb = start(3, 1000).await;
    let fresh = format!("{}?fresh=true", links_path());
    for remaining in ["2", "1", "0"] {
        let r = sb.get(&fresh).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-rate-limit-remaining-minute"), remaining);
    }
    let r = sb.get(&fresh).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("Too Many Requests"));
    assert_eq!(r.header("retry-after"), "55"); // clock is 5 s into the minute
    assert_eq!(r.header("x-rate-limit-limit-minute"), "3");
    assert_eq!(r.header("x-rate-limit-remaining-minute"), "0");
    let r = sb
        .put(&format!("{}/{LINK_3}", links_path()), r#"{"label":"x"}"#)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    sb.clock.advance(55_000);
    let r = sb.get(&fresh).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-rate-limit-remaining-minute"), "2");
    // Three list calls and this one were charged; the two 429s were not.
    assert_eq!(r.header("x-ofapi-credits-balance"), "996");
    sb.stop().await;
}

#[tokio::test]
async fn cache_hits_are_free_and_uncounted_fresh_bypasses_and_an_update_invalidates() {
    let sb = start(100, 1000).await;
    let first = sb.get(&links_path()).await;
    assert_eq!(first.header("x-ofapi-is-cached"), "false");
    assert_eq!(first.header("x-ofapi-credits-used"), "1");
    sb.clock.advance(2_000);
    let hit = sb.get(&links_path()).await;
    assert_eq!(hit.header("x-ofapi-is-cached"), "true");
    assert_eq!(hit.header("x-ofapi-credits-used"), "0");
    assert_eq!(hit.header("x-ofapi-credits-balance"), "999");
    assert_eq!(hit.header("x-rate-limit-remaining-minute"), "99");
    let meta = &hit.json()["_meta"];
    assert_eq!(meta["_cache"]["is_cached"], true);
    assert_eq!(
        meta["_cache"]["cached_at"],
        super::clock::format_rfc3339(T0 + 5_000)
    );
    assert_eq!(meta["_credits"]["note"], "Cache HIT. No credits debited");
    assert_eq!(hit.json()["data"], first.json()["data"]);

    let fresh = sb.get(&format!("{}?fresh=true", links_path())).await;
    assert_eq!(fresh.header("x-ofapi-is-cached"), "false");
    assert_eq!(fresh.header("x-ofapi-credits-balance"), "998");

    sb.put(
        &format!("{}/{LINK_3}", links_path()),
        r#"{"label":"Renamed"}"#,
    )
    .await;
    let after = sb.get(&links_path()).await;
    assert_eq!(after.header("x-ofapi-is-cached"), "false");
    assert_eq!(after.json()["data"]["list"][2]["label"], "Renamed");

    sb.clock.advance(60_000);
    let expired = sb.get(&links_path()).await;
    assert_eq!(expired.header("x-ofapi-is-cached"), "false");
    sb.stop().await;
}

#[tokio::test]
async fn if_none_match_gets_304_without_body_but_with_the_metering_headers() {
    let sb = start(100, 1000).await;
    let first = sb.get(&links_path()).await;
    let etag = first.header("etag").to_owned();
    let auth = ("authorization", "Bearer sandbox-key");
    let r = sb
        .send(
            "GET",
            &links_path(),
            &[auth, ("if-none-match", &etag)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert!(r.headers.get("content-type").is_none());
    assert_eq!(r.header("etag"), etag);
    assert_eq!(r.header("x-ofapi-is-cached"), "true");
    assert_eq!(r.header("x-ofapi-credits-used"), "0");
    assert_eq!(r.header("x-ofapi-credits-balance"), "999");
    assert_eq!(r.header("x-rate-limit-limit-minute"), "100");
    assert_eq!(r.header("x-rate-limit-remaining-minute"), "99");

    // A fresh GET that still matches is charged like any GET.
    let path = format!("{}?fresh=true", links_path());
    let r = sb
        .send("GET", &path, &[auth, ("if-none-match", &etag)], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("x-ofapi-credits-used"), "1");
    assert_eq!(r.header("x-ofapi-credits-balance"), "998");

    let r = sb
        .send(
            "GET",
            &links_path(),
            &[auth, ("if-none-match", "\"other\"")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    sb.stop().await;
}

#[tokio::test]
async fn pages_link_to_the_next_by_the_request_host_and_end_with_null() {
    let sb = start(100, 1000).await;
    let port = sb.addr.port();
    let mut path = format!("{}?limit=10", links_path());
    let mut seen = Vec::new();
    loop {
        let r = sb.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let body = r.json();
        for link in body["data"]["list"].as_array().unwrap() {
            seen.push(link["id"].as_str().unwrap().to_owned());
        }
        match body["_pagination"]["next_page"].as_str() {
            Some(next) => {
                assert_eq!(body["data"]["hasMore"], true);
                let prefix = format!("http://sandbox.test:{port}");
                path = next.strip_prefix(&prefix).unwrap().to_owned();
            }
            None => {
                assert!(body["_pagination"]["next_page"].is_null());
                assert_eq!(body["data"]["hasMore"], false);
                break;
            }
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(
        path,
        format!("/api/fansly/{ACCT}/tracking-links?offset=20&limit=10")
    );
    let bad = sb.get(&format!("{}?limit=0", links_path())).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    sb.stop().await;
}

#[tokio::test]
async fn stats_follow_the_documented_route_and_cost_one_credit() {
    let sb = start(100, 1000).await;
    let r = sb
        .get(&format!(
            "{}/{LINK_3}/stats?before=2026-06-03T23%3A59%3A59Z&after=2026-05-03T00%3A00%3A00Z",
            links_path()
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    let days = body["data"].as_array().unwrap();
    assert_eq!(days.len(), 32);
    assert_eq!(days[0]["trackingLinkId"], LINK_3);
    assert_eq!(
        (
            days[0]["year"].clone(),
            days[0]["month"].clone(),
            days[0]["date"].clone()
        ),
        (2026.into(), 5.into(), 3.into())
    );
    assert_eq!(body["_meta"]["_credits"]["used"], 1);
    assert_eq!(
        body["_meta"]["_cache"]["note"],
        "Cache disabled for this endpoint"
    );
    let bad = sb
        .get(&format!("{}/{LINK_3}/stats?after=soon", links_path()))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let who = sb.get("/api/whoami").await;
    assert_eq!(who.status, StatusCode::OK);
    assert_eq!(who.header("x-ofapi-credits-used"), "0");
    sb.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_too() {
    let sb = start(100, 1000).await;
    let stream = TcpStream::connect(sb.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/api/whoami", sb.addr))
        .header("authorization", "Bearer sandbox-key")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    drop(sender);
    sb.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made_up() {
    let sb = start(100, 1000).await;
    let r = sb
        .send("GET", "/api/whoami", &[("x-request-id", "abc-123")], None)
        .await;
    assert_eq!(r.header("x-request-id"), "abc-123");
    let r = sb.get("/api/whoami").await;
    assert!(r.header("x-request-id").starts_with("sbx-"));
    sb.stop().await;
}

#[tokio::test]
async fn public_serve_answers_and_returns_after_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let options = SandboxOptions {
        api_key: KEY.into(),
        requests_per_minute: 10,
        starting_balance: 10,
    };
    let task = tokio::spawn(super::serve(listener, options, async {
        let _ = stopped.await;
    }));
    let sb = Sandbox {
        addr,
        clock: Arc::new(ManualClock::at(0)),
        stop: Some(stop),
        task,
    };
    let r = sb.get("/api/whoami").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["_meta"]["_credits"]["note"], "Free endpoint");
    sb.stop().await;
}
