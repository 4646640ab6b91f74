//! Rate-limit benchmark (issue 3): clients together offer 2× the upstream's per-minute limit for
//! two minutes of simulated time, through the gateway's real rate-limit layer, against the
//! in-process sandbox upstream (which enforces its own limit with 429s on the same clock).
//!
//! Per wall-clock minute it reports the requests that reached the upstream as a share of the
//! limit and of `headroom × limit`, the upstream's 429s, the gateway's own refusals, and the p99
//! wait of the admitted requests. Paused tokio time: the result does not depend on the machine.
//!
//!     cargo bench --bench rate_limit            # LIMIT=1000 HEADROOM=0.9 CLIENTS=4 MAX_WAIT=2s
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use ofapi_gateway::body::{empty, Body, BoxError};
use ofapi_gateway::config::{self, Client};
use ofapi_gateway::layers::rate_limit::RateLimitLayer;
use ofapi_gateway::layers::rescue::RescueLayer;
use ofapi_gateway::limiter::{Limiter, LimiterClock};
use ofapi_gateway::sandbox::{self, SandboxOptions};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

const KEY: &str = "bench-key";

/// When the request left the client, to measure its wait.
#[derive(Clone, Copy)]
struct SentAt(Duration);

#[derive(Default)]
struct Window {
    offered: u64,
    reached: u64,
    upstream_429: u64,
    refused: u64,
    waits_ms: Vec<f64>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), BoxError> {
    let limit: u32 = env("LIMIT", 1000);
    let headroom: f64 = env("HEADROOM", 0.9);
    let clients: usize = env("CLIENTS", 4);
    let max_wait: String = env("MAX_WAIT", "2s".to_string());
    let minutes: u64 = 2;

    let mut toml = format!(
        "[upstream]\napi_key_env = \"K\"\n[rate_limit]\nrequests_per_minute = {limit}\n\
         headroom = {headroom}\nmax_wait = \"{max_wait}\"\n"
    );
    for i in 0..clients {
        toml.push_str(&format!(
            "[[clients]]\nname = \"client-{i}\"\nkey_sha256 = \"{}\"\n",
            format!("{i:x}")
                .repeat(64)
                .chars()
                .take(64)
                .collect::<String>()
        ));
    }
    let config = config::parse_str(Path::new("bench.toml"), &toml, &|_| Some(KEY.into()))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let windows = runtime.block_on(async {
        // Start on a minute boundary, so the windows are whole upstream minutes.
        let clock = LimiterClock::starting_at(Duration::from_secs(1_800_000_000 / 60 * 60));
        let limiter = Limiter::with_clock(&config, clock);
        let windows = Arc::new(Mutex::new(BTreeMap::<u64, Window>::new()));

        let upstream = sandbox::service(
            SandboxOptions {
                api_key: KEY.into(),
                requests_per_minute: limit,
                starting_balance: u64::MAX / 2,
            },
            clock,
        );
        let seen = windows.clone();
        let recorded = ServiceBuilder::new()
            .map_request(move |req: Request<Body>| {
                let now = clock.elapsed();
                let mut w = seen.lock().unwrap_or_else(|p| p.into_inner());
                let window = w.entry(now.as_secs() / 60).or_default();
                window.reached += 1;
                if let Some(SentAt(sent)) = req.extensions().get::<SentAt>() {
                    window.waits_ms.push((now - *sent).as_secs_f64() * 1000.0);
                }
                req
            })
            .map_response({
                let seen = windows.clone();
                move |resp: Response<Body>| {
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                        let minute = clock.elapsed().as_secs() / 60;
                        let mut w = seen.lock().unwrap_or_else(|p| p.into_inner());
                        w.entry(minute).or_default().upstream_429 += 1;
                    }
                    resp
                }
            })
            .service(upstream);
        let gateway: BoxCloneService<Request<Body>, Response<Body>, std::convert::Infallible> =
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(RescueLayer)
                    .layer(RateLimitLayer::new(limiter))
                    .service(recorded),
            );

        // Each client offers 2 × limit / clients a minute, evenly spaced.
        let per_client = 2.0 * f64::from(limit) / clients as f64;
        let every = Duration::from_secs_f64(60.0 / per_client);
        let mut tasks = Vec::new();
        for client in config.clients.clients.iter().cloned() {
            let gateway = gateway.clone();
            let windows = windows.clone();
            tasks.push(tokio::spawn(offer(
                client, gateway, windows, clock, every, minutes,
            )));
        }
        for task in tasks {
            let _ = task.await;
        }
        // Let the last waiters finish.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let result = std::mem::take(&mut *windows.lock().unwrap_or_else(|p| p.into_inner()));
        result
    });

    let budget = (f64::from(limit) * headroom).floor();
    println!(
        "rate-limit benchmark: limit {limit}/min, headroom {headroom}, {clients} clients offering 2x the limit, max_wait {max_wait}, {minutes} simulated minutes\n"
    );
    println!(
        "{:>6} {:>8} {:>8} {:>10} {:>14} {:>12} {:>9} {:>12}",
        "minute",
        "offered",
        "reached",
        "/ limit",
        "/ headroom×lim",
        "upstream 429",
        "refused",
        "p99 wait ms"
    );
    for (minute, mut w) in windows.into_iter().filter(|(m, _)| *m < minutes) {
        w.waits_ms.sort_by(f64::total_cmp);
        let p99 = w
            .waits_ms
            .get(((w.waits_ms.len() as f64) * 0.99) as usize)
            .or(w.waits_ms.last())
            .copied()
            .unwrap_or(0.0);
        println!(
            "{:>6} {:>8} {:>8} {:>10.3} {:>14.3} {:>12} {:>9} {:>12.1}",
            minute + 1,
            w.offered,
            w.reached,
            w.reached as f64 / f64::from(limit),
            w.reached as f64 / budget,
            w.upstream_429,
            w.refused,
            p99
        );
    }
    Ok(())
}

async fn offer(
    client: Arc<Client>,
    gateway: BoxCloneService<Request<Body>, Response<Body>, std::convert::Infallible>,
    windows: Arc<Mutex<BTreeMap<u64, Window>>>,
    clock: LimiterClock,
    every: Duration,
    minutes: u64,
) {
    let mut tick = tokio::time::interval(every);
    let mut inflight = Vec::new();
    while clock.elapsed() < Duration::from_secs(60 * minutes) {
        tick.tick().await;
        let sent = clock.elapsed();
        windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sent.as_secs() / 60)
            .or_default()
            .offered += 1;
        let mut req =
            Request::get("/api/fansly/fansly_acct_bench/tracking-links/100000000000000003/stats")
                .header("authorization", format!("Bearer {KEY}"))
                .body(empty())
                .unwrap_or_default();
        req.extensions_mut().insert(Arc::clone(&client));
        req.extensions_mut().insert(SentAt(sent));
        let mut gateway = gateway.clone();
        let windows = windows.clone();
        inflight.push(tokio::spawn(async move {
            let Ok(ready) = gateway.ready().await;
            let response = ready.call(req);
            let Ok(response) = response.await;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                let minute = clock.elapsed().as_secs() / 60;
                let mut w = windows.lock().unwrap_or_else(|p| p.into_inner());
                w.entry(minute).or_default().refused += 1;
            }
        }));
    }
    for task in inflight {
        let _ = task.await;
    }
}
