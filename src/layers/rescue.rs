//! The rescue: the one place where an error becomes an HTTP response. Everything below it may fail
//! with a `BoxError` (a [`GatewayError`] for client faults, timeouts, upstream failures); above it
//! the stack is infallible, as hyper wants.
//!
//! The refusal goes into the request's [`Call`], which records it (log line, metrics) like any
//! other call.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request_id::X_REQUEST_ID;
use crate::body::{Body, BoxError};
use crate::call::{Call, Refusal};
use crate::error::GatewayError;

#[derive(Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            not_ready: None,
        }
    }
}

pub struct Rescue<S> {
    inner: S,
    /// Why the inner service could not take the next request (it was shed).
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let call = req.extensions().get::<Call>().cloned();
        let state = match self.not_ready.take() {
            Some(error) => State::Failed { error: Some(error) },
            None => State::Called {
                inner: self.inner.call(req),
            },
        };
        ResponseFuture {
            state,
            request_id,
            call,
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        request_id: Option<HeaderValue>,
        call: Option<Call>,
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
        if let Some(call) = this.call.take() {
            call.refused(Refusal {
                status: error.status(),
                code: error.code(),
                scope: match &error {
                    GatewayError::RateLimited { scope, .. } => Some(*scope),
                    _ => None,
                },
            });
        }
        Poll::Ready(Ok(error.into_response(request_id)))
    }
}
