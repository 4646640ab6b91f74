//! Request body limit (413): a declared `Content-Length` over `max_body_bytes` is refused at
//! once; a body without one (chunked, h2) is counted as it streams and fails with
//! [`BodyTooLarge`] the moment it grows past the limit, which the rescue turns into 413.

use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{header, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use super::{reject, EarlyOr};
use crate::body::{Body, BoxError};
use crate::error::GatewayError;

/// A request body grew past the limit (in bytes).
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body over {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max_bytes: u64,
}

impl BodyLimitLayer {
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max_bytes: u64,
}

impl<S> Service<Request<Body>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = EarlyOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let max = self.max_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return reject(GatewayError::PayloadTooLarge { limit: max });
        }
        // hyper already enforces a declared length exactly; only unknown lengths need counting.
        if declared.is_some() {
            return Either::Right(self.inner.call(req));
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let req = req.map(|body| {
            Limited::new(body, limit)
                .map_err(move |error| -> BoxError {
                    if error.is::<LengthLimitError>() {
                        Box::new(BodyTooLarge(max))
                    } else {
                        error
                    }
                })
                .boxed_unsync()
        });
        Either::Right(self.inner.call(req))
    }
}
