//! The limiter as a whole, through the real rate-limit layer, in paused tokio time: against the
//! in-process sandbox (which enforces its own per-minute limit on the same clock) and against
//! scripted upstreams.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use super::{Limiter, LimiterClock};
use crate::body::{empty, full, Body, BoxError};
use crate::config::{self, Client, Config};
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::rescue::RescueLayer;
use crate::sandbox::{self, SandboxOptions};

const KEY: &str = "sandbox-test-key";

/// The start of a wall-clock minute, plus a second.
fn clock() -> LimiterClock {
    LimiterClock::starting_at(Duration::from_secs(1_800_000_000 / 60 * 60 + 1))
}

fn config(requests_per_minute: u32, headroom: f64, max_wait: &str, clients: &str) -> Config {
    let text = format!(
        "[upstream]\napi_key_env = \"K\"\n\
         [rate_limit]\nrequests_per_minute = {requests_per_minute}\nheadroom = {headroom}\nmax_wait = \"{max_wait}\"\n\
         {clients}"
    );
    config::parse_str(Path::new("test.toml"), &text, &|_| Some(KEY.into())).unwrap()
}

fn client_toml(name: &str, hash_byte: char, rpm: Option<u32>) -> String {
    let rpm = rpm.map_or(String::new(), |r| format!("requests_per_minute = {r}\n"));
    format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{rpm}",
        hash_byte.to_string().repeat(64)
    )
}

fn client(config: &Config, name: &str) -> Arc<Client> {
    config
        .clients
        .clients
        .iter()
        .find(|c| c.id.as_str() == name)
        .cloned()
        .unwrap()
}

/// What the upstream saw: arrival times (time since the clock's origin) and its 429s.
#[derive(Default)]
struct Seen {
    arrivals: Mutex<Vec<Duration>>,
    too_many: AtomicUsize,
}

impl Seen {
    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

/// The rate-limit layer (under the rescue, as in the stack) in front of `upstream`.
fn gateway<U>(limiter: Limiter, clock: LimiterClock, seen: Arc<Seen>, upstream: U) -> Gateway
where
    U: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    U::Future: Send + 'static,
{
    let recorded = ServiceBuilder::new()
        .map_request(move |req: Request<Body>| {
            seen.arrivals.lock().unwrap().push(clock.elapsed());
            req
        })
        .service(upstream);
    // Boxed: a concrete future type keeps rustc's `Send` checks simple in spawned tasks.
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RescueLayer)
            .layer(RateLimitLayer::new(limiter))
            .service(recorded),
    )
}

type Gateway = BoxCloneService<Request<Body>, Response<Body>, std::convert::Infallible>;

async fn send(svc: &mut Gateway, client: &Arc<Client>) -> Response<Body> {
    let mut req = Request::get("/api/fansly/fansly_acct_1/tracking-links?fresh=true")
        .header("authorization", format!("Bearer {KEY}"))
        .body(empty())
        .unwrap();
    req.extensions_mut().insert(Arc::clone(client));
    // `ready` then `call` rather than `oneshot`: the boxed future is plainly `Send`.
    let ready = svc.ready().await.unwrap();
    let response = ready.call(req);
    response.await.unwrap()
}

fn sandbox(
    limit: u32,
    clock: LimiterClock,
    seen: Arc<Seen>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let inner = sandbox::service(
        SandboxOptions {
            api_key: KEY.into(),
            requests_per_minute: limit,
            starting_balance: 1_000_000_000,
        },
        clock,
    );
    ServiceBuilder::new()
        .map_response(move |resp: Response<Body>| {
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                seen.too_many.fetch_add(1, Ordering::SeqCst);
            }
            resp
        })
        .service(inner)
}

#[tokio::test(start_paused = true)]
async fn three_times_the_limit_never_exceeds_it_nor_trips_an_upstream_429() {
    let limit = 100;
    let config = config(
        limit,
        0.9,
        "2s",
        &[
            client_toml("a", 'a', None),
            client_toml("b", 'b', None),
            client_toml("c", 'c', None),
        ]
        .concat(),
    );
    let clock = clock();
    let limiter = Limiter::with_clock(&config, clock);
    let seen = Arc::new(Seen::default());
    let svc = gateway(
        limiter,
        clock,
        seen.clone(),
        sandbox(limit, clock, seen.clone()),
    );

    // Each client offers the whole limit: 3× in all, for three minutes.
    let served = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let client = client(&config, name);
        let svc = svc.clone();
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60) / limit);
            let mut inflight = Vec::new();
            while clock.elapsed() < Duration::from_secs(180) {
                every.tick().await;
                let (mut svc, client, served) = (svc.clone(), client.clone(), served.clone());
                inflight.push(tokio::spawn(async move {
                    let resp = send(&mut svc, &client).await;
                    if resp.status() == StatusCode::OK {
                        *served
                            .lock()
                            .unwrap()
                            .entry(client.id.to_string())
                            .or_default() += 1;
                    } else {
                        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
                        assert!(resp.headers().contains_key("retry-after"));
                        assert!(resp.headers().contains_key("retry-after-ms"));
                    }
                }));
            }
            for task in inflight {
                task.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0, "no upstream 429");
    let arrivals = seen.arrivals.lock().unwrap().clone();
    for (i, start) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(60))
            .count();
        assert!(
            in_window <= limit as usize,
            "{in_window} in the 60 s from {start:?}"
        );
    }
    // Steady state: at least 0.97 × headroom × limit per minute reached the upstream.
    assert!(
        arrivals.len() as f64 >= 3.0 * 90.0 * 0.97,
        "{}",
        arrivals.len()
    );
    // Fair shares: each client got a third, give or take a few.
    let served = served.lock().unwrap();
    for (name, n) in served.iter() {
        assert!(
            (88..=100).contains(n),
            "client {name} served {n}: {served:?}"
        );
    }
}

/// A scripted upstream: answers with `reply(n)` for the n-th request (from 0).
fn scripted(
    reply: impl Fn(usize) -> Response<Body> + Send + Sync + 'static,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let calls = Arc::new(AtomicUsize::new(0));
    let reply = Arc::new(reply);
    tower::service_fn(move |_req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let resp = reply(n);
        async move { Ok::<_, BoxError>(resp) }
    })
}

fn ok_with(headers: &[(&'static str, &str)]) -> Response<Body> {
    let mut resp = Response::new(full("{}"));
    for (name, value) in headers {
        resp.headers_mut().insert(*name, value.parse().unwrap());
    }
    resp
}

#[tokio::test(start_paused = true)]
async fn a_client_over_its_own_limit_gets_429_while_another_is_served() {
    let config = config(
        1000,
        0.9,
        "0s",
        &[
            client_toml("greedy", 'a', Some(20)),
            client_toml("other", 'b', None),
        ]
        .concat(),
    );
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let mut svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        scripted(|_| ok_with(&[])),
    );
    let (greedy, other) = (client(&config, "greedy"), client(&config, "other"));
    let mut refused = 0;
    for _ in 0..10 {
        let resp = send(&mut svc, &greedy).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            assert_eq!(resp.headers()["ratelimit-limit"], "20");
            let (remaining, reset, retry_after) = refusal_headers(&resp);
            assert!(retry_after >= 1);
            assert_eq!((remaining, reset), (0, retry_after));
        }
    }
    // A burst of 1 + 20/20 = 2, then one every 60/19 s.
    assert_eq!(refused, 8);
    let resp = send(&mut svc, &other).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the other client is still served"
    );
    assert!(resp.headers().contains_key("ratelimit-remaining"));
    assert_eq!(seen.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_429_pauses_all_forwarding_for_its_retry_after() {
    let config = config(
        1000,
        0.9,
        "2s",
        &[client_toml("a", 'a', None), client_toml("b", 'b', None)].concat(),
    );
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let upstream = scripted(|n| {
        if n == 0 {
            let mut resp = ok_with(&[("retry-after", "5")]);
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            resp
        } else {
            ok_with(&[])
        }
    });
    let mut svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        upstream,
    );
    let (a, b) = (client(&config, "a"), client(&config, "b"));

    let resp = send(&mut svc, &a).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"code\":\"rate_limited\""));

    // Any client, within the pause: refused at once, nothing reaches the upstream.
    let resp = send(&mut svc, &b).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(seen.count(), 1);

    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(send(&mut svc, &b).await.status(), StatusCode::OK);
    assert_eq!(seen.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn remaining_zero_stops_forwarding_until_the_minute_resets() {
    let config = config(1000, 0.9, "2s", &client_toml("a", 'a', None));
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let upstream = scripted(|n| {
        let remaining = if n == 0 { "0" } else { "999" };
        ok_with(&[
            ("x-rate-limit-limit-minute", "1000"),
            ("x-rate-limit-remaining-minute", remaining),
        ])
    });
    let mut svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        upstream,
    );
    let a = client(&config, "a");
    assert_eq!(send(&mut svc, &a).await.status(), StatusCode::OK);

    // Someone else spent the key's minute: held (and, past max_wait, refused) until it turns.
    let resp = send(&mut svc, &a).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert_eq!(seen.count(), 1);

    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(send(&mut svc, &a).await.status(), StatusCode::OK);
    assert_eq!(seen.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_limit_is_learned_from_the_upstreams_headers() {
    let config = config(1000, 0.9, "2s", &client_toml("a", 'a', None));
    let clock = clock();
    let limiter = Limiter::with_clock(&config, clock);
    let seen = Arc::new(Seen::default());
    let upstream = scripted(|_| {
        ok_with(&[
            ("x-rate-limit-limit-minute", "50"),
            ("x-rate-limit-remaining-minute", "49"),
        ])
    });
    let mut svc = gateway(limiter.clone(), clock, seen, upstream);
    let a = client(&config, "a");
    let first = send(&mut svc, &a).await;
    assert_eq!(limiter.upstream_limit(), 50);
    assert_eq!(first.headers()["ratelimit-limit"], "45", "floor(50 × 0.9)");
}

#[tokio::test(start_paused = true)]
async fn cached_answers_do_not_count_against_the_upstream_budget() {
    // One a minute, no burst: without the give-back, the second request would be refused.
    let config = config(1, 1.0, "0s", &client_toml("a", 'a', None));
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let upstream = scripted(|_| ok_with(&[("x-ofapi-is-cached", "true")]));
    let mut svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        upstream,
    );
    let a = client(&config, "a");
    for _ in 0..5 {
        assert_eq!(send(&mut svc, &a).await.status(), StatusCode::OK);
    }
    assert_eq!(seen.count(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_busy_client_cannot_take_the_slots_another_is_waiting_for() {
    // One slot a second, no burst; everyone may wait half a minute.
    let config = config(
        60,
        1.0,
        "30s",
        &[
            client_toml("busy", 'a', None),
            client_toml("quiet", 'b', None),
        ]
        .concat(),
    );
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        scripted(|_| ok_with(&[])),
    );
    let (busy, quiet) = (client(&config, "busy"), client(&config, "quiet"));

    let mut busy_tasks = Vec::new();
    for _ in 0..20 {
        let (mut svc, busy) = (svc.clone(), busy.clone());
        busy_tasks.push(tokio::spawn(
            async move { send(&mut svc, &busy).await.status() },
        ));
    }
    tokio::time::advance(Duration::from_millis(500)).await;
    let started = clock.elapsed();
    let mut quiet_svc = svc.clone();
    let status = send(&mut quiet_svc, &quiet).await.status();
    let waited = clock.elapsed() - started;
    assert_eq!(status, StatusCode::OK);
    // Round robin: the quiet client's request goes right after the busy client's next one.
    assert!(
        waited <= Duration::from_secs(2),
        "quiet waited {waited:?} behind the busy client"
    );
    for task in busy_tasks {
        let _ = task.await.unwrap();
    }
}

/// The rate-limit headers of a 429, with its `Retry-After`.
fn refusal_headers(resp: &Response<Body>) -> (u64, u64, u64) {
    let number = |name: &str| -> u64 { resp.headers()[name].to_str().unwrap().parse().unwrap() };
    (
        number("ratelimit-remaining"),
        number("ratelimit-reset"),
        number("retry-after"),
    )
}

#[tokio::test(start_paused = true)]
async fn calls_right_after_the_old_limit_is_reported_again_are_not_refused() {
    let config = config(1000, 0.9, "2s", &client_toml("a", 'a', None));
    let clock = clock();
    let limiter = Limiter::with_clock(&config, clock);
    let seen = Arc::new(Seen::default());
    // One answer says 10 a minute, every later one 5000 again.
    let upstream = scripted(|n| {
        let (limit, remaining) = if n == 0 {
            ("10".to_owned(), "9".to_owned())
        } else {
            ("5000".to_owned(), (4999 - n).to_string())
        };
        ok_with(&[
            ("x-rate-limit-limit-minute", &limit),
            ("x-rate-limit-remaining-minute", &remaining),
        ])
    });
    let mut svc = gateway(limiter.clone(), clock, seen.clone(), upstream);
    let a = client(&config, "a");
    let started = clock.elapsed();
    for call in 0..100 {
        let resp = send(&mut svc, &a).await;
        assert_eq!(resp.status(), StatusCode::OK, "call {call}");
    }
    assert_eq!(limiter.upstream_limit(), 5000);
    assert_eq!(seen.count(), 100);
    assert_eq!(clock.elapsed(), started, "no call waited");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_budget_429_says_nothing_remains_until_its_retry_after() {
    let config = config(1000, 0.9, "2s", &client_toml("a", 'a', None));
    let clock = clock();
    let seen = Arc::new(Seen::default());
    let upstream = scripted(|n| {
        ok_with(&[
            ("x-rate-limit-limit-minute", "10"),
            ("x-rate-limit-remaining-minute", &(9 - n).to_string()),
        ])
    });
    let mut svc = gateway(
        Limiter::with_clock(&config, clock),
        clock,
        seen.clone(),
        upstream,
    );
    let a = client(&config, "a");
    // At 10 a minute the burst is 2; the next slot is 6.7 s away, past max_wait.
    assert_eq!(send(&mut svc, &a).await.status(), StatusCode::OK);
    let second = send(&mut svc, &a).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["ratelimit-limit"], "9");
    let refused = send(&mut svc, &a).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(seen.count(), 2);
    assert_eq!(refused.headers()["ratelimit-limit"], "9");
    let (remaining, reset, retry_after) = refusal_headers(&refused);
    assert_eq!(remaining, 0, "the 429 leaves nothing to send now");
    assert_eq!(retry_after, 7);
    assert_eq!(
        reset, retry_after,
        "the quota is back when the retry is due"
    );
}
