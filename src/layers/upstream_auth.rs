//! Upstream credentials: the client's own credentials and the hop-by-hop headers go; the shared
//! upstream key goes on as `Authorization: Bearer <key>` (marked sensitive, so no `Debug` or
//! trace of the request can show it). Runs last before the upstream client, so no layer above
//! ever holds a request that carries the upstream key.

use std::task::{Context, Poll};

use http::{header, Request};
use tower::{Layer, Service};

use crate::body::Body;
use crate::stack::SharedConfig;
use crate::upstream::remove_hop_by_hop;

#[derive(Clone)]
pub struct UpstreamAuthLayer {
    config: SharedConfig,
}

impl UpstreamAuthLayer {
    pub fn new(config: SharedConfig) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for UpstreamAuthLayer {
    type Service = UpstreamAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        UpstreamAuth {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UpstreamAuth<S> {
    inner: S,
    config: SharedConfig,
}

impl<S> Service<Request<Body>> for UpstreamAuth<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let headers = req.headers_mut();
        remove_hop_by_hop(headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::PROXY_AUTHORIZATION);
        // The client's Host names the gateway: the upstream client replaces it with the upstream's.
        if let Some(value) = self.config.load().upstream.api_key.bearer_header() {
            headers.insert(header::AUTHORIZATION, value);
        }
        self.inner.call(req)
    }
}
