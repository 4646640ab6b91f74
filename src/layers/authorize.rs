//! Authorization: the client's `allow` route patterns and `accounts` scope (403). Runs after
//! authentication and routing, before anything reads the body or spends a credit.
//!
//! The `accounts` scope applies to paths that name an account; team paths such as
//! `/api/whoami` are governed by `allow` alone.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use super::route::RouteInfo;
use super::{reject, EarlyOr};
use crate::body::{Body, BoxError};
use crate::config::Client;
use crate::error::GatewayError;

#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Authorize<S>
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
        let (Some(client), Some(route)) = (
            req.extensions().get::<Arc<Client>>(),
            req.extensions().get::<RouteInfo>(),
        ) else {
            // The stack puts authentication and routing first; without them, refuse.
            return reject(GatewayError::Unauthenticated("no authenticated client"));
        };
        if let Some(allow) = &client.allow {
            if !allow
                .iter()
                .any(|pattern| pattern.matches(req.method(), req.uri().path()))
            {
                return reject(GatewayError::Forbidden(format!(
                    "client {} may not call {} {}",
                    client.id,
                    req.method(),
                    route.template
                )));
            }
        }
        if let (Some(accounts), Some(account)) = (&client.accounts, &route.account) {
            if !accounts.iter().any(|a| a == account) {
                return reject(GatewayError::Forbidden(format!(
                    "client {} may not use account {account}",
                    client.id
                )));
            }
        }
        Either::Right(self.inner.call(req))
    }
}
