//! Authentication: the gateway key in `Authorization: Bearer ...` is hashed with SHA-256 and
//! looked up among the clients' hashes (the keys themselves are never stored). A known, enabled
//! client goes into the request's extensions as `Arc<Client>`; anything else is 401.
//!
//! `Authorization` is a singleton field (RFC 9110 §11.6.2): a request with two is malformed and
//! gets 400. Taking either one would let two parties that read the request (a proxy in front,
//! the gateway, a log) disagree about whose request it is.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{header, Request, Response};
use tower::{Layer, Service};

use super::{reject, EarlyOr};
use crate::body::{Body, BoxError};
use crate::call::Call;
use crate::config::{Client, KeyHash};
use crate::error::GatewayError;
use crate::stack::SharedConfig;

#[derive(Clone)]
pub struct AuthenticateLayer {
    config: SharedConfig,
}

impl AuthenticateLayer {
    pub fn new(config: SharedConfig) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    config: SharedConfig,
}

impl<S> Service<Request<Body>> for Authenticate<S>
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
        match self.identify(&req) {
            Ok(client) => {
                if let Some(call) = req.extensions().get::<Call>() {
                    call.set_client(&client.id);
                }
                req.extensions_mut().insert(client);
                Either::Right(self.inner.call(req))
            }
            Err(error) => reject(error),
        }
    }
}

impl<S> Authenticate<S> {
    fn identify(&self, req: &Request<Body>) -> Result<Arc<Client>, GatewayError> {
        let unauthenticated = GatewayError::Unauthenticated;
        let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
        let header = values.next().ok_or(unauthenticated(
            "send your gateway key as Authorization: Bearer <key>",
        ))?;
        if values.next().is_some() {
            return Err(GatewayError::BadRequest(
                "more than one Authorization header".into(),
            ));
        }
        let key = bearer_token(header.as_bytes())
            .ok_or(unauthenticated("malformed Authorization header"))?;
        let config = self.config.load();
        let client = config
            .clients
            .lookup(&KeyHash::of_key(key))
            .ok_or(unauthenticated("unknown gateway key"))?;
        if client.disabled {
            return Err(unauthenticated("this gateway key is disabled"));
        }
        Ok(Arc::clone(client))
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), if it is visible ASCII without spaces.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    if token.is_empty() || !token.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(b"Bearer ofgw_abc"), Some("ofgw_abc"));
        assert_eq!(bearer_token(b"bearer  ofgw_abc "), Some("ofgw_abc"));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer \xffabc"), None);
    }
}
