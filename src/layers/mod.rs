//! The Tower layers of the client stack, one concern per file. `stack.rs` puts them in order and
//! says why each sits where it does.

pub mod authenticate;
pub mod authorize;
pub mod body_limit;
pub mod concurrency;
pub mod drain;
pub mod meter;
pub mod rate_limit;
pub mod record;
pub mod request_id;
pub mod rescue;
pub mod route;
pub mod upstream_auth;
pub mod validate;

use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use futures_util::future::{ready, Either, Ready};
use http::Response;

/// The future of a layer that either answers early with an error or calls its inner service.
pub type EarlyOr<F> = Either<Ready<Result<Response<Body>, BoxError>>, F>;

/// The inner service that was polled ready, for a layer whose future must own it; a fresh clone
/// takes its place for the next request (calling a clone that was never polled ready would break
/// the `Service` contract).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Answers early with `error`, which the rescue turns into a response.
pub fn reject<F>(error: GatewayError) -> EarlyOr<F> {
    Either::Left(ready(Err(error.into())))
}
