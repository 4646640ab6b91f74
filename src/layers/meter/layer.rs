//! The meter layer: for every forwarded call, wraps the response body so that when it ends the
//! call's credits (from `_meta`, else the `x-ofapi-*` headers) go to the access log line, the
//! metrics, the ledger, the client's budget, the balance watch, and — for what the headers did not
//! already say — the limiter. It sits right above the upstream client, so it sees the upstream's
//! answer as it is and times the upstream alone.
//!
//! A call whose client hangs up while it is at the upstream is not dropped with the client's
//! request: the upstream charges for it all the same, so it is finished in the background and
//! metered like any other (a client could otherwise spend past its budget by hanging up on every
//! call). Those tasks are bounded by what was admitted upstream (each took a rate-limit slot, and
//! lives at most `upstream.timeout` for the answer and as long again, and 16 MiB, to read its
//! body), and tracked in [`Meter::detached`] so that a graceful stop waits for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use super::body::{BodyEnd, BodyOutcome, FinishWhenDropped, MeteredBody};
use super::rewrite::NextPageRewriter;
use super::scan::MetaFound;
use crate::body::{boxed, Body, BoxError};
use crate::budget::{Budgets, Reservation};
use crate::config::Client;
use crate::error::GatewayError;
use crate::layers::request_id::{ReceivedAt, RequestId};
use crate::layers::rescue::RequestNote;
use crate::layers::route::RouteInfo;
use crate::ledger::{Ledger, LedgerRow, Outcome};
use crate::limiter::{Limiter, Ticket, UpstreamReport};
use crate::metrics::{Metrics, UNKNOWN};
use crate::upstream::figures::{accept_credits, credit_figure, AcceptedCredits, ReportedCredits};
use crate::upstream::UpstreamHeaders;

/// Everything the meter reports to. Shared by all requests.
pub struct Meter {
    pub metrics: Metrics,
    pub ledger: Option<Ledger>,
    pub limiter: Limiter,
    pub budgets: Budgets,
    /// `next_page` links that start with this (the upstream's base URL)...
    pub upstream_base: String,
    /// ...are pointed here instead (`server.public_url`).
    pub public_url: String,
    /// WARN once when the balance falls below this.
    pub low_balance_warning: u64,
    pub balance: Mutex<BalanceWatch>,
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

/// The status recorded for a call whose answer never came back because the gateway stopped
/// before it could finish it in the background (nginx's "client closed request").
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Follows the credit balance between answers.
#[derive(Default)]
pub struct BalanceWatch {
    /// The balance the latest answer reported.
    last: Option<u64>,
    /// Whether the low-balance warning was given (it is given again after a top-up).
    warned: bool,
}

#[derive(Clone)]
pub struct MeterLayer {
    meter: Arc<Meter>,
}

impl MeterLayer {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { meter }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            meter: self.meter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

/// What is known of a call before it goes out.
struct Call {
    request_id: String,
    client: Arc<str>,
    method: Method,
    route: Arc<str>,
    account: Option<String>,
    ticket: Option<Ticket>,
    reservation: Option<Arc<Reservation>>,
    received_at: Instant,
    sent_at: Instant,
    /// The client hung up before the answer came: finished in the background, recorded as cut.
    detached: bool,
    /// Says whether the client was answered with an error (504 at `request_timeout`) before
    /// the upstream's answer came: the call is then recorded with the status the client saw.
    note: Option<Arc<RequestNote>>,
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ext = req.extensions();
        let note = ext.get::<Arc<RequestNote>>().cloned();
        if let Some(note) = &note {
            note.mark_forwarded();
        }
        let route = ext.get::<RouteInfo>();
        let now = Instant::now();
        let call = Call {
            request_id: ext
                .get::<RequestId>()
                .map_or_else(|| "-".to_owned(), |id| id.as_str().to_owned()),
            client: ext
                .get::<Arc<Client>>()
                .map_or_else(|| Arc::clone(&UNKNOWN), |c| Arc::clone(&c.id.0)),
            method: req.method().clone(),
            route: route.map_or_else(|| Arc::clone(&UNKNOWN), |r| Arc::clone(&r.template)),
            account: route.and_then(|r| r.account.clone()),
            ticket: ext.get::<Ticket>().copied(),
            reservation: ext.get::<Arc<Reservation>>().cloned(),
            received_at: ext.get::<ReceivedAt>().map_or(now, |r| r.0),
            sent_at: now,
            detached: false,
            note,
        };
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            call: Some(call),
            meter: self.meter.clone(),
        }
    }
}

/// The call's future. Dropped before the upstream has answered (the client hung up, or the
/// request deadline passed), it hands the call to a background task rather than abandoning it:
/// see [`Meter::detach`].
pub struct ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + Unpin + 'static,
{
    /// `None` once it has answered.
    inner: Option<F>,
    call: Option<Call>,
    meter: Arc<Meter>,
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
        let Some(call) = this.call.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(this.meter.clone().answered(call, result))
    }
}

impl<F> Drop for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + Unpin + 'static,
{
    fn drop(&mut self) {
        if let (Some(call), Some(inner)) = (self.call.take(), self.inner.take()) {
            Meter::detach(self.meter.clone(), call, inner);
        }
    }
}

/// Records a background call with unknown credits if it is dropped before it got that far (the
/// runtime stopped under it): a row that says "unknown" rather than no row at all.
struct Unfinished {
    meter: Arc<Meter>,
    call: Option<Call>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let status =
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_GATEWAY);
            self.meter.record(
                &call,
                status,
                None,
                Outcome::Cut,
                UpstreamHeaders::default(),
                BodyEnd::empty(),
            );
        }
    }
}

impl Meter {
    /// The upstream client's result: a response whose body is metered as it streams, or an
    /// error recorded at once.
    fn answered(
        self: Arc<Self>,
        call: Call,
        result: Result<Response<Body>, BoxError>,
    ) -> Result<Response<Body>, BoxError> {
        match result {
            Ok(response) => Ok(Meter::wrap(self, call, response)),
            Err(error) => {
                let status = GatewayError::classify(error.as_ref()).status();
                self.record(
                    &call,
                    status,
                    None,
                    Outcome::Error,
                    UpstreamHeaders::default(),
                    BodyEnd::empty(),
                );
                Err(error)
            }
        }
    }

    /// Finishes a call whose client went away while it was at the upstream: waits for the
    /// answer on its own task and records it as cut (its body, dropped there, is read for
    /// `_meta` when the headers did not give the credits: see [`Meter::wrap`]). Without a
    /// runtime to run on, records it at once with unknown credits.
    fn detach<F>(meter: Arc<Self>, mut call: Call, inner: F)
    where
        F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
    {
        call.detached = true;
        let mut unfinished = Unfinished {
            meter: Arc::clone(&meter),
            call: Some(call),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return drop(unfinished);
        };
        meter.detached.clone().spawn_on(
            async move {
                let result = inner.await;
                if let Some(call) = unfinished.call.take() {
                    drop(Arc::clone(&meter).answered(call, result));
                }
            },
            &runtime,
        );
    }

    /// Wraps the body so the call is recorded when it ends.
    fn wrap(meter: Arc<Self>, call: Call, response: Response<Body>) -> Response<Body> {
        let upstream_ms = call.sent_at.elapsed().as_millis() as u64;
        let (mut parts, body) = response.into_parts();
        let facts = UpstreamHeaders::read(&parts.headers);
        let json = is_json(&parts.headers);
        // Only list pages carry `next_page`; rewriting other answers would cost them their
        // Content-Length for nothing.
        let rewriter = (json && call.method == Method::GET)
            .then(|| NextPageRewriter::new(&meter.upstream_base, &meter.public_url))
            .filter(NextPageRewriter::may_change_length);
        if rewriter.is_some() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let status = parts.status;
        // Dropped by a client that hung up (or by a call finished in the background), a body
        // whose credits the headers did not give (or gave as a figure that cannot be real) is
        // read to its end anyway.
        let header_charge = facts
            .credits_used
            .filter(|&used| credit_figure(used).is_ok());
        let finish = (json && header_charge.is_none()).then(|| FinishWhenDropped {
            detached: meter.detached.clone(),
            timeout: meter.detached_body_timeout,
            limit: DETACHED_BODY_LIMIT,
        });
        let body = MeteredBody::new(body, json, rewriter, move |end| {
            meter.record(
                &call,
                status,
                Some(upstream_ms),
                outcome(end.outcome),
                facts,
                end,
            );
        });
        let body = match finish {
            Some(finish) => body.finish_when_dropped(finish),
            None => body,
        };
        Response::from_parts(parts, boxed(body))
    }

    /// The one record of a forwarded call: log line, metrics, ledger row, budget, limiter.
    fn record(
        &self,
        call: &Call,
        status: StatusCode,
        upstream_ms: Option<u64>,
        outcome: Outcome,
        headers: UpstreamHeaders,
        end: BodyEnd,
    ) {
        // The client got nothing of a call finished in the background.
        let outcome = match outcome {
            Outcome::Complete if call.detached => Outcome::Cut,
            other => other,
        };
        let status = call
            .note
            .as_ref()
            .and_then(|note| note.answered())
            .unwrap_or(status);
        let found = end.found;
        let credits = self.take_credits(found, headers);
        let (used, balance) = (credits.used, credits.balance);
        let cached = found.is_cached.or(headers.cached);
        let limit = headers.limit_minute.or(found.limit_minute);
        let remaining = headers.remaining_minute.or(found.remaining_minute);
        let total = call.received_at.elapsed();

        // The rate-limit layer already acted on the headers; the body adds what they lacked.
        if let Some(ticket) = call.ticket {
            self.limiter.observe(
                ticket,
                UpstreamReport {
                    limit_minute: headers
                        .limit_minute
                        .is_none()
                        .then_some(found.limit_minute)
                        .flatten(),
                    remaining_minute: headers
                        .remaining_minute
                        .is_none()
                        .then_some(found.remaining_minute)
                        .flatten(),
                    cached: headers.cached.is_none() && found.is_cached == Some(true),
                },
            );
        }

        let (client, route) = (&call.client, &call.route);
        if limit.is_some() || remaining.is_some() {
            self.metrics.upstream_rate_limit(limit, remaining);
        }
        match used {
            Some(used) => self.metrics.credits(client, route, used),
            None if outcome != Outcome::Error
                && !status.is_client_error()
                && !status.is_server_error() =>
            {
                self.metrics.credits_unknown(client, route);
            }
            None => {}
        }
        if let Some(balance) = balance {
            self.metrics.balance(balance);
        }
        if let Some(reservation) = &call.reservation {
            match used {
                Some(used) => reservation.settle(used),
                // Answered but silent about its cost: charge what was expected, to stay safe.
                None if outcome == Outcome::Complete && status.is_success() => {
                    reservation.settle(reservation.amount());
                }
                // Failed or refused upstream: the reservation is released when dropped.
                None => {}
            }
            if let Some((spent, left)) = self
                .budgets
                .status(&crate::config::ClientId(Arc::clone(&call.client)))
            {
                self.metrics.budget(client, spent, Some(left));
            }
        }
        if let Some(ledger) = &self.ledger {
            ledger.record(LedgerRow {
                ts_ms: crate::calendar::now_ms(),
                request_id: call.request_id.clone(),
                client: Arc::clone(client),
                method: call.method.to_string(),
                route: Arc::clone(route),
                account: call.account.clone(),
                status: status.as_u16(),
                credits_used: used,
                balance,
                cached,
                duration_ms: total.as_millis() as u64,
                outcome,
            });
            // The dropped-rows counter is brought up to date by each `/metrics` scrape.
        }
        self.metrics.request(client, route, status.as_u16(), total);
        tracing::info!(
            request_id = call.request_id.as_str(),
            client = &**client,
            method = call.method.as_str(),
            route = &**route,
            account = call.account.as_deref(),
            status = status.as_u16(),
            credits_used = used,
            credit_balance = balance,
            cached,
            upstream_ms,
            total_ms = total.as_millis() as u64,
            outcome = outcome.as_str(),
            bytes = end.bytes,
            implausible_credits = credits.implausible.as_deref(),
            "request"
        );
    }

    /// The answer's credit figures that are real ([`accept_credits`]: a charge is checked against
    /// the balance seen before this answer), and the balance watch brought up to date with them.
    fn take_credits(&self, found: MetaFound, headers: UpstreamHeaders) -> AcceptedCredits {
        let mut watch = self.balance.lock().unwrap_or_else(|p| p.into_inner());
        let meta = ReportedCredits {
            used: found.credits_used,
            balance: found.balance,
        };
        let headers = ReportedCredits {
            used: headers.credits_used,
            balance: headers.balance,
        };
        let credits = accept_credits(meta, headers, watch.last);
        if let Some(balance) = credits.balance {
            self.watch_balance(&mut watch, balance, credits.used.unwrap_or(0));
        }
        credits
    }

    /// Warns once when the balance crosses below the threshold, and counts credits that left
    /// the balance without being charged to a call through the gateway.
    fn watch_balance(&self, watch: &mut BalanceWatch, balance: u64, used: u64) {
        if let Some(last) = watch.last {
            // Between two answers the balance should drop by exactly this answer's charge;
            // more means someone spent elsewhere. (A rise is a top-up, or answers that
            // crossed: start over from here.)
            let expected = last.saturating_sub(used);
            if balance < expected {
                self.metrics.unattributed_credits(expected - balance);
            }
        }
        if balance >= self.low_balance_warning {
            watch.warned = false;
        } else if !watch.warned {
            watch.warned = true;
            tracing::warn!(
                credit_balance = balance,
                threshold = self.low_balance_warning,
                "credit balance is below credits.low_balance_warning"
            );
        }
        watch.last = Some(balance);
    }
}

fn outcome(outcome: BodyOutcome) -> Outcome {
    match outcome {
        BodyOutcome::Complete => Outcome::Complete,
        BodyOutcome::Dropped => Outcome::Cut,
        BodyOutcome::Error => Outcome::Cut,
    }
}

/// A JSON answer that is not content-encoded: the only kind whose `_meta` can be read.
fn is_json(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    json && headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}
