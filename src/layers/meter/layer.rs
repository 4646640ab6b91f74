//! The meter layer: sits right above the upstream client, so it sees the upstream's answer as it
//! is and times the upstream alone. It writes into the request's [`Call`] that the call was
//! forwarded, what the answer's head said (parsed once, [`UpstreamFacts::from_headers`]) and, when
//! its body ends, what the body's `_meta` said; the call is recorded when its body is over (see
//! `crate::record`). It also points `_pagination.next_page` links at the gateway.
//!
//! A call whose client hangs up while it is at the upstream is not dropped with the client's
//! request: the upstream charges for it all the same, so it is finished in the background and
//! recorded like any other (a client could otherwise spend past its budget by hanging up on every
//! call). Those tasks are bounded by what was admitted upstream (each took a rate-limit slot, and
//! lives at most `upstream.timeout` for the answer and as long again, and 16 MiB, to read its
//! body), and tracked in [`MeterSettings::detached`] so that a graceful stop waits for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use super::body::{BodyOutcome, FinishWhenDropped, MeteredBody};
use super::rewrite::NextPageRewriter;
use crate::body::{boxed, is_json, Body, BoxError};
use crate::call::Call;
use crate::error::GatewayError;
use crate::upstream::facts::UpstreamFacts;
use crate::upstream::figures::credit_figure;

/// What the meter needs besides the call. Shared by all requests.
pub struct MeterSettings {
    /// `next_page` links that start with this (the upstream's base URL)...
    pub upstream_base: String,
    /// ...are pointed here instead (`server.public_url`).
    pub public_url: String,
    /// Calls (and bodies) finished in the background after their client hung up; a graceful
    /// stop waits for them before it closes the ledger.
    pub detached: TaskTracker,
    /// How long such a call may take to deliver its answer's body once its headers are in
    /// (`upstream.timeout`; the wait for the headers is bounded by the upstream client).
    pub detached_body_timeout: Duration,
}

/// The most of a background call's answer read for its `_meta`; past it the call is recorded
/// with what its headers said.
const DETACHED_BODY_LIMIT: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct MeterLayer {
    settings: Arc<MeterSettings>,
}

impl MeterLayer {
    pub fn new(settings: Arc<MeterSettings>) -> Self {
        Self { settings }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            settings: self.settings.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    settings: Arc<MeterSettings>,
}

/// A forwarded call, on its way.
struct InFlight {
    call: Call,
    method: Method,
    sent_at: Instant,
}

impl<S> Service<Request<Body>> for Metered<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    // Owned, movable and sendable, so that it can be finished on its own task when the client
    // hangs up (the upstream client's future is a `Pin<Box<..>>`).
    S::Future: Send + Unpin + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Taken out of the request: the meter holds the call from here on, not the transport.
        let in_flight = req.extensions_mut().remove::<Call>().map(|call| {
            call.forwarded();
            InFlight {
                call,
                method: req.method().clone(),
                sent_at: Instant::now(),
            }
        });
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            in_flight,
            settings: self.settings.clone(),
        }
    }
}

/// The call's future. Dropped before the upstream has answered (the client hung up, or the
/// request deadline passed), it hands the call to a background task rather than abandoning it:
/// see [`detach`].
pub struct ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + Unpin + 'static,
{
    /// `None` once it has answered.
    inner: Option<F>,
    in_flight: Option<InFlight>,
    settings: Arc<MeterSettings>,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + Unpin + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let result = ready!(Pin::new(inner).poll(cx));
        this.inner = None;
        let Some(in_flight) = this.in_flight.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(answered(&this.settings, in_flight, result))
    }
}

impl<F> Drop for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + Unpin + 'static,
{
    fn drop(&mut self) {
        if let (Some(in_flight), Some(inner)) = (self.in_flight.take(), self.inner.take()) {
            detach(self.settings.clone(), in_flight, inner);
        }
    }
}

/// The upstream client's result: a response whose body is metered as it streams, or a failure
/// written into the call at once.
fn answered(
    settings: &Arc<MeterSettings>,
    in_flight: InFlight,
    result: Result<Response<Body>, BoxError>,
) -> Result<Response<Body>, BoxError> {
    match result {
        Ok(response) => Ok(wrap(settings, in_flight, response)),
        Err(error) => {
            in_flight
                .call
                .failed(GatewayError::classify(error.as_ref()).status());
            Err(error)
        }
    }
}

/// Finishes a call whose client went away while it was at the upstream: waits for the answer
/// on its own task, which holds the call until then (its body, dropped there, is read for
/// `_meta` when the headers did not give the credits: see [`wrap`]). Without a runtime to run
/// on, the call is recorded at once, as cut, with what it has.
fn detach<F>(settings: Arc<MeterSettings>, in_flight: InFlight, inner: F)
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    in_flight.call.detached();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    settings.detached.clone().spawn_on(
        async move {
            let result = inner.await;
            drop(answered(&settings, in_flight, result));
        },
        &runtime,
    );
}

/// Writes the answer's head into the call and wraps the body so its end is written too.
fn wrap(
    settings: &Arc<MeterSettings>,
    in_flight: InFlight,
    response: Response<Body>,
) -> Response<Body> {
    let InFlight {
        call,
        method,
        sent_at,
    } = in_flight;
    let (mut parts, body) = response.into_parts();
    let headers = UpstreamFacts::from_headers(&parts.headers);
    call.answered(parts.status, sent_at.elapsed().as_millis() as u64, headers);
    let json = is_json(&parts.headers);
    // Only list pages carry `next_page`; rewriting other answers would cost them their
    // Content-Length for nothing.
    let rewriter = (json && method == Method::GET)
        .then(|| NextPageRewriter::new(&settings.upstream_base, &settings.public_url))
        .filter(NextPageRewriter::may_change_length);
    if rewriter.is_some() {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    // Dropped by a client that hung up (or by a call finished in the background), a body
    // whose credits the headers did not give (or gave as a figure that cannot be real) is
    // read to its end anyway.
    let header_charge = headers
        .credits_used
        .filter(|&used| credit_figure(used).is_ok());
    let finish = (json && header_charge.is_none()).then(|| FinishWhenDropped {
        detached: settings.detached.clone(),
        timeout: settings.detached_body_timeout,
        limit: DETACHED_BODY_LIMIT,
    });
    let body = MeteredBody::new(body, json, rewriter, move |end| {
        call.body_ended(end.found, end.outcome == BodyOutcome::Complete, end.bytes);
    });
    let body = match finish {
        Some(finish) => body.finish_when_dropped(finish),
        None => body,
    };
    Response::from_parts(parts, boxed(body))
}
