//! Authorization: the client's `allow` route patterns and `accounts` scope (403), then its credit
//! budget (402, or 503 while what it spent cannot be read from the ledger): the call's expected
//! cost is reserved here and travels on in the request's extensions until the meter settles it. Runs after authentication and routing, before anything
//! reads the body or spends a credit.
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
use crate::budget::Budgets;
use crate::config::Client;
use crate::error::GatewayError;

#[derive(Clone, Default)]
pub struct AuthorizeLayer {
    budgets: Budgets,
}

impl AuthorizeLayer {
    pub fn new(budgets: Budgets) -> Self {
        Self { budgets }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            budgets: self.budgets.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    budgets: Budgets,
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
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
        if self.budgets.is_unread(&client.id) {
            return reject(GatewayError::BudgetUnreadable);
        }
        let reservation = match self.budgets.reserve(client, &route.template) {
            Ok(reservation) => reservation,
            Err(exhausted) => {
                return reject(GatewayError::BudgetExceeded(format!(
                    "client {} has {exhausted}",
                    client.id
                )))
            }
        };
        if let Some(reservation) = reservation {
            req.extensions_mut().insert(Arc::new(reservation));
        }
        Either::Right(self.inner.call(req))
    }
}
