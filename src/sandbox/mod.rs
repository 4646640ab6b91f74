//! The sandbox upstream (SPEC §9): a faithful local stand-in for OnlyFansAPI's Fansly
//! tracking-link routes, with in-memory state, `_meta` and headers as documented, a credit
//! balance that goes down, a per-minute limit and `{"error": ...}` on a wrong key.
//!
//! Routes (all JSON, all behind `Authorization: Bearer <api_key>`):
//!
//! | route | credits | cache |
//! |---|---|---|
//! | `GET /api/fansly/{fanslyAccount}/tracking-links?limit=&offset=` | 1 (chosen) | 60 s (chosen) |
//! | `PUT /api/fansly/{fanslyAccount}/tracking-links/{tracking_link_id}` | 1 (documented) | disabled (documented) |
//! | `GET /api/fansly/{fanslyAccount}/tracking-links/{tracking_link_id}/stats?after=&before=` | 1 (documented) | disabled (documented) |
//! | `GET /api/whoami` | 0 (chosen) | disabled |
//!
//! Taken from OnlyFansAPI's documentation: the paths; the update body and its 200 example
//! (`src/sandbox/fixtures/update-tracking-link.200.json`); the stats route, its `before`/`after` ISO 8601
//! parameters (defaults: now / 30 days ago) and its daily-points `data` array; `_meta` with
//! `_credits`, `_cache` (`cached_at` like `2025-01-29T16:30:43+00:00`, notes "Always",
//! "Cache HIT. No credits debited", "Cache disabled for this endpoint", "Add ?fresh=true ...") and
//! `_rate_limits` (day fields legacy `null`); the `x-ofapi-*` / `x-rate-limit-*` headers;
//! `_pagination.next_page` as a full URL (`?offset=..&limit=..`) or `null` on the last page; a
//! cache hit costs 0 credits and does not count against the limit; the limit resets every minute.
//!
//! Chosen, because the docs say nothing we could find: the list's `data` shape (`{"list": [...],
//! "hasMore": bool}`, as OnlyFansAPI's OnlyFans tracking-links list), its price (1) and cache TTL
//! (60 s), `limit` default 10 and range 1..=100; the 401/404/429 sentences; Laravel-style 422s
//! (which also count against the limit but cost nothing); a 304 is charged like the GET it
//! answers (0 on a cache hit); a balance at 0 keeps serving with `used: 0` rather than refusing;
//! the whoami body; unknown paths answer 404 before the key is checked (as a Laravel router does);
//! unauthenticated requests are not counted against the limit. The per-minute window is fixed per
//! wall-clock UTC minute. Stats responses are not cached because the documented example says
//! "Cache disabled for this endpoint"; only the list is.

mod clock;
mod routes;
mod state;

#[cfg(test)]
mod http_tests;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use clock::{Clock, SystemClock};

/// What the sandbox is started with.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// The one upstream key it accepts (`SANDBOX_API_KEY`, default `sandbox-key`).
    pub api_key: String,
    /// Its per-minute request limit (`limit_minute`); past it, 429 until the minute turns.
    pub requests_per_minute: u32,
    /// The credit balance it starts with.
    pub starting_balance: u64,
}

/// Serves the sandbox on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    options: SandboxOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_clock(listener, options, Arc::new(SystemClock), shutdown).await
}

/// The sandbox as an in-process service on the limiter's clock, for tests and benchmarks that
/// run the gateway's layers against it in paused tokio time, without sockets.
pub fn service(
    options: SandboxOptions,
    clock: crate::limiter::LimiterClock,
) -> impl tower::Service<
    http::Request<crate::body::Body>,
    Response = http::Response<crate::body::Body>,
    Error = crate::body::BoxError,
    Future = impl Future<Output = Result<http::Response<crate::body::Body>, crate::body::BoxError>>
                 + Send,
> + Clone
       + Send
       + 'static {
    let app = Arc::new(routes::App::new(options, Arc::new(clock)));
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    tower::service_fn(move |req: http::Request<crate::body::Body>| {
        let app = Arc::clone(&app);
        let (parts, body) = req.into_parts();
        // The body is read first, with combinators: rustc cannot yet prove `Send` for an
        // `async` block that holds the stack's boxed body across an await.
        body.collect().then(move |collected| {
            let bytes = collected.map(|c| c.to_bytes()).unwrap_or_default();
            let req = http::Request::from_parts(parts, http_body_util::Full::new(bytes));
            async move { Ok(app.handle(req).await.map(into_body)) }
        })
    })
}

fn into_body(body: routes::SandboxBody) -> crate::body::Body {
    use http_body_util::BodyExt;
    body.map_err(|never| match never {}).boxed_unsync()
}

/// `serve` with the clock injected (tests move time by hand).
pub(crate) async fn serve_with_clock(
    listener: TcpListener,
    options: SandboxOptions,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Arc::new(routes::App::new(options, clock));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "sandbox: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                let service = service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(app.handle(req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(%peer, error = %err, "sandbox: connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
