//! Rate limiting (SPEC §6): each request waits for a slot under its client's limit and the
//! shared upstream budget (at most `max_wait`), or gets 429 without reaching the upstream. The
//! answer's `x-rate-limit-*` / `x-ofapi-is-cached` headers steer the budget; an upstream 429
//! pauses all forwarding and reaches the client as the gateway's own 429. Every answer tells the
//! client where it stands with `RateLimit-Limit`, `-Remaining` and `-Reset`; a 429's say the
//! limit that refused, `Remaining: 0`, and a reset at its `Retry-After`.
//!
//! The slot's [`Ticket`] goes into the request's `Call`, so that its record can report what the
//! body's `_meta` says when the head did not say it all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::call::Call;
use crate::config::Client;
use crate::error::GatewayError;
use crate::limiter::Limiter;
use crate::limiter::{RateLimitStatus, Refusal, Scope, Ticket};
use crate::upstream::facts::UpstreamFacts;

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Limiter,
}

impl RateLimitLayer {
    pub fn new(limiter: Limiter) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let limiter = self.limiter.clone();
        let mut inner = super::take_ready(&mut self.inner);
        // Boxed outside the `async` block: rustc cannot yet prove `Send` for a generic inner
        // future awaited inside one.
        let mut forward =
            move |req| -> BoxFuture<Result<Response<Body>, BoxError>> { Box::pin(inner.call(req)) };
        let client = req.extensions().get::<Arc<Client>>().cloned();
        let call = req.extensions().get::<Call>().cloned();
        Box::pin(async move {
            let Some(client) = client else {
                return Err(GatewayError::Unauthenticated("no authenticated client").into());
            };
            let ticket = limiter.acquire(&client).await.map_err(refused)?;
            let slot = Slot {
                limiter: &limiter,
                ticket,
            };
            if let Some(call) = &call {
                call.set_ticket(ticket);
            }
            let mut response = forward(req).await?;
            slot.answered(call.as_ref(), response.headers());
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = retry_after(response.headers());
                limiter.pause(retry_after);
                let wait = retry_after.unwrap_or_else(|| limiter.upstream_wait());
                return Err(refused(limiter.refusal(&client, wait, Scope::Upstream)));
            }
            set_status_headers(response.headers_mut(), limiter.status(&client));
            Ok(response)
        })
    }
}

/// A taken slot: finished exactly once, when the answer arrives, or on drop (the request failed
/// or was cancelled) so that no slot stays counted as in flight.
struct Slot<'a> {
    limiter: &'a Limiter,
    ticket: Ticket,
}

impl Slot<'_> {
    /// The answer's head is in. The limiter learns its limits now if the head says all it wants
    /// to know (or nothing will say more: no meter read the head into the call); otherwise the
    /// call's record tells it, with what the body's `_meta` adds (`record::limiter`).
    fn answered(self, call: Option<&Call>, headers: &HeaderMap) {
        // Drop runs `finish` first, so the report does not count this request as in flight.
        let (limiter, ticket) = (self.limiter, self.ticket);
        drop(self);
        let read = call.and_then(Call::upstream_headers);
        let facts = read.unwrap_or_else(|| UpstreamFacts::from_headers(headers));
        if read.is_none() || facts.tell_the_limiter_everything() {
            limiter.observe(ticket, facts.limiter_report());
            if let Some(call) = call {
                call.limiter_fed();
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.limiter.finish(self.ticket);
    }
}

fn refused(refusal: Refusal) -> BoxError {
    GatewayError::RateLimited {
        retry_after: refusal.retry_after,
        scope: refusal.scope.as_str(),
        status: Some(refusal.status),
    }
    .into()
}

/// How long an upstream 429 asks to wait: `retry-after-ms`, else `Retry-After` in seconds or as
/// an HTTP date; `None` when it says nothing usable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(3600.0)));
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(3600)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let from_now = date.duration_since(SystemTime::now()).unwrap_or_default();
    Some(from_now.min(Duration::from_secs(3600)))
}

// Built at compile time: a name given as `&str` is parsed and checked on every insert.
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (whole seconds, rounded up).
pub fn set_status_headers(headers: &mut HeaderMap, status: RateLimitStatus) {
    let reset = status.reset.as_millis().div_ceil(1000) as u64;
    headers.reserve(3);
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(status.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(status.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(reset));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::UpstreamReport;

    #[test]
    fn retry_after_reads_ms_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        let mut headers = HeaderMap::new();
        let in_30s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert("retry-after", HeaderValue::from_str(&in_30s).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn upstream_headers_become_a_report() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-rate-limit-limit-minute",
            HeaderValue::from_static("5000"),
        );
        headers.insert(
            "x-rate-limit-remaining-minute",
            HeaderValue::from_static("4999"),
        );
        headers.insert("x-ofapi-is-cached", HeaderValue::from_static("true"));
        assert_eq!(
            UpstreamFacts::from_headers(&headers).limiter_report(),
            UpstreamReport {
                limit_minute: Some(5000),
                remaining_minute: Some(4999),
                cached: true
            }
        );
    }
}
