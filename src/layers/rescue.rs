//! The rescue: the one place where an error becomes an HTTP response. Everything below it may fail
//! with a `BoxError` (a [`GatewayError`] for client faults, timeouts, upstream failures); above it
//! the stack is infallible, as hyper wants.
//!
//! It also writes the log line and counts the request for the requests the gateway answered
//! itself (the meter does both for forwarded calls): the layers below leave what they learned
//! (client, route) in a [`RequestNote`] it put in the request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request_id::{ReceivedAt, X_REQUEST_ID};
use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use crate::metrics::{Metrics, UNKNOWN};

/// What the layers below learned about a request, for the log line of an early answer.
#[derive(Debug, Default)]
pub struct RequestNote {
    client: OnceLock<Arc<str>>,
    route: OnceLock<Arc<str>>,
    /// The meter took the request: it logs and counts it.
    forwarded: AtomicBool,
    /// The status of the error the rescue answered with (0: none yet), for a forwarded call the
    /// meter records after the client's answer (its `request_timeout` fired first).
    answered: AtomicU16,
}

impl RequestNote {
    pub fn set_client(&self, client: &Arc<str>) {
        let _ = self.client.set(Arc::clone(client));
    }
    pub fn set_route(&self, route: &Arc<str>) {
        let _ = self.route.set(Arc::clone(route));
    }
    pub fn mark_forwarded(&self) {
        self.forwarded.store(true, Ordering::Relaxed);
    }
    /// The status the client was sent instead of the upstream's answer, if any.
    pub fn answered(&self) -> Option<StatusCode> {
        StatusCode::from_u16(self.answered.load(Ordering::SeqCst)).ok()
    }
}

#[derive(Clone, Default)]
pub struct RescueLayer {
    metrics: Metrics,
}

impl RescueLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

pub struct Rescue<S> {
    inner: S,
    metrics: Metrics,
    /// Why the inner service could not take the next request (it was shed).
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that fails to get ready (load shed) fails this one request, in `call`.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.not_ready = result.err().map(Into::into);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let note = Arc::new(RequestNote::default());
        req.extensions_mut().insert(Arc::clone(&note));
        let early = Early {
            note,
            method: req.method().clone(),
            received_at: req
                .extensions()
                .get::<ReceivedAt>()
                .map_or_else(Instant::now, |r| r.0),
            metrics: self.metrics.clone(),
        };
        let state = match self.not_ready.take() {
            Some(error) => State::Failed { error: Some(error) },
            None => State::Called {
                inner: self.inner.call(req),
            },
        };
        ResponseFuture {
            state,
            request_id,
            early,
        }
    }
}

/// What the rescue needs to log and count a request it answers itself.
struct Early {
    note: Arc<RequestNote>,
    method: Method,
    received_at: Instant,
    metrics: Metrics,
}

impl Early {
    fn record(&self, error: &GatewayError, request_id: &str) {
        let client = self.note.client.get().unwrap_or(&UNKNOWN);
        if let GatewayError::RateLimited { scope, .. } = error {
            self.metrics.rate_limited(client, scope);
        }
        if self.note.forwarded.load(Ordering::Relaxed) {
            // The meter records the call when the upstream's answer comes, with this status.
            self.note
                .answered
                .store(error.status().as_u16(), Ordering::SeqCst);
            return;
        }
        let route = self.note.route.get().unwrap_or(&UNKNOWN);
        let total = self.received_at.elapsed();
        let status = error.status().as_u16();
        self.metrics.request(client, route, status, total);
        tracing::info!(
            request_id,
            client = &**client,
            method = self.method.as_str(),
            route = &**route,
            status,
            code = error.code(),
            total_ms = total.as_millis() as u64,
            "request refused"
        );
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        request_id: Option<HeaderValue>,
        early: Early,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] inner: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match this.state.project() {
            StateProj::Called { inner } => match ready!(inner.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(error) => error.into(),
            },
            StateProj::Failed { error } => match error.take() {
                Some(error) => error,
                None => "polled after completion".into(),
            },
        };
        let request_id = this
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let error = GatewayError::from_box(error);
        if error.status().is_server_error() {
            tracing::warn!(request_id, code = error.code(), error = %error, "request failed");
        }
        this.early.record(&error, request_id);
        Poll::Ready(Ok(error.into_response(request_id)))
    }
}
