//! Authorization: the client's `allow` route patterns and `accounts` scope (403), then its credit
//! budget (402, or 503 while what it spent cannot be read from the ledger): the call's estimated
//! cost is reserved here and travels on in the request's extensions until the meter settles it.
//! Runs after authentication and routing, before anything
//! reads the body or spends a credit.
//!
//! A budget that cannot cover the call is 402 at once. One that could, but whose remaining
//! credits are held by the client's calls in flight, makes the call wait for them (at most
//! `rate_limit.max_wait`, see `budget.rs`), then 429 with `Retry-After`: that wait is the only
//! one here, so the common case stays a plain call of the inner service.
//!
//! The `accounts` scope applies to paths that name an account; team paths such as
//! `/api/whoami` are governed by `allow` alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use super::route::RouteInfo;
use super::{reject, take_ready, EarlyOr};
use crate::body::{Body, BoxError};
use crate::budget::{Budgets, Refusal, Reservation};
use crate::call::Call;
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Authorize<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    /// Answered or passed on at once, or after waiting for the client's budget.
    type Future = Either<EarlyOr<S::Future>, BoxFuture<Result<Response<Body>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (Some(client), Some(route)) = (
            req.extensions().get::<Arc<Client>>(),
            req.extensions().get::<RouteInfo>(),
        ) else {
            // The stack puts authentication and routing first; without them, refuse.
            return Either::Left(reject(GatewayError::Unauthenticated(
                "no authenticated client",
            )));
        };
        if let Some(allow) = &client.allow {
            if !allow
                .iter()
                .any(|pattern| pattern.matches(req.method(), req.uri().path()))
            {
                return Either::Left(reject(GatewayError::Forbidden(format!(
                    "client {} may not call {} {}",
                    client.id,
                    req.method(),
                    route.template
                ))));
            }
        }
        if let (Some(accounts), Some(account)) = (&client.accounts, &route.account) {
            if !accounts.iter().any(|a| a == account) {
                return Either::Left(reject(GatewayError::Forbidden(format!(
                    "client {} may not use account {account}",
                    client.id
                ))));
            }
        }
        if self.budgets.is_unread(&client.id) {
            return Either::Left(reject(GatewayError::BudgetUnreadable));
        }
        match self.budgets.reserve(client, &route.template) {
            Ok(reservation) => {
                keep(&req, reservation);
                Either::Left(Either::Right(self.inner.call(req)))
            }
            Err(Refusal::Held { .. }) => {
                let (client, route) = (Arc::clone(client), Arc::clone(&route.template));
                let budgets = self.budgets.clone();
                let mut inner = take_ready(&mut self.inner);
                // Boxed outside the `async` block: rustc cannot yet prove `Send` for a generic
                // inner future awaited inside one.
                let mut forward = move |req| -> BoxFuture<Result<Response<Body>, BoxError>> {
                    Box::pin(inner.call(req))
                };
                Either::Right(Box::pin(async move {
                    let reservation = budgets
                        .reserve_waiting(&client, &route)
                        .await
                        .map_err(|refusal| BoxError::from(refused(&client, refusal)))?;
                    keep(&req, reservation);
                    forward(req).await
                }))
            }
            Err(refusal) => Either::Left(reject(refused(client, refusal))),
        }
    }
}

/// The call keeps its reservation until it is recorded (`record::budget` settles it).
fn keep(req: &Request<Body>, reservation: Option<Reservation>) {
    if let (Some(call), Some(reservation)) = (req.extensions().get::<Call>(), reservation) {
        call.set_reservation(Arc::new(reservation));
    }
}

/// The SPEC §5 answer to a call its client's budget does not admit.
fn refused(client: &Client, refusal: Refusal) -> GatewayError {
    match refusal {
        Refusal::Exhausted(exhausted) => {
            GatewayError::BudgetExceeded(format!("client {} has {exhausted}", client.id))
        }
        Refusal::Held { retry_after } => GatewayError::RateLimited {
            retry_after,
            scope: "budget",
            status: None,
        },
    }
}
