//! The client-facing Tower stack, outermost layer first. The order is the design: each layer
//! may rely on what the layers above it did, and nothing that costs a credit or an upstream slot
//! happens before the request has been proven safe, authenticated, authorized and valid.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, Request, Response};
use hyper::body::Incoming;
use tower::timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::body::{boxed, Body};
use crate::budget::Budgets;
use crate::config::Config;
use crate::layers::authenticate::AuthenticateLayer;
use crate::layers::authorize::AuthorizeLayer;
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::concurrency::ConcurrencyLimitLayer;
use crate::layers::drain::DrainOnDrop;
use crate::layers::meter::{MeterLayer, MeterSettings};
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::record::RecordLayer;
use crate::layers::request_id::{RequestIdLayer, X_REQUEST_ID};
use crate::layers::rescue::RescueLayer;
use crate::layers::route::{RouteLayer, MAX_ROUTE_TEMPLATES};
use crate::layers::upstream_auth::UpstreamAuthLayer;
use crate::layers::validate::ValidateLayer;
use crate::limiter::Limiter;
use crate::record::Recorder;
use crate::upstream::UpstreamClient;

/// The live configuration: read per request by the layers whose settings may be reloaded
/// (clients, scopes, the upstream key); swapped whole on SIGHUP.
pub type SharedConfig = Arc<ArcSwap<Config>>;

/// What the stack's layers share with the rest of the gateway, and what every copy of the stack
/// (one per serving thread) shares with the others: a clone shares all of it.
#[derive(Clone)]
pub struct StackParts {
    pub config: SharedConfig,
    pub limiter: Limiter,
    pub budgets: Budgets,
    /// Takes every call's record when it is over.
    pub recorder: Arc<Recorder>,
    pub meter: Arc<MeterSettings>,
    /// Off only to measure what metering costs (`serve --no-metering`, benchmarks).
    pub metering: bool,
    /// One `max_concurrent_requests` for the whole gateway...
    concurrency: ConcurrencyLimitLayer,
    /// ...and one set of route names (and so of metric series), whatever the threads.
    routes: RouteLayer,
}

impl StackParts {
    pub fn new(
        config: SharedConfig,
        limiter: Limiter,
        budgets: Budgets,
        recorder: Arc<Recorder>,
        meter: Arc<MeterSettings>,
        metering: bool,
    ) -> Self {
        let concurrency = ConcurrencyLimitLayer::new(config.load().server.max_concurrent_requests);
        Self {
            config,
            limiter,
            budgets,
            recorder,
            meter,
            metering,
            concurrency,
            routes: RouteLayer::new(MAX_ROUTE_TEMPLATES),
        }
    }
}

/// Builds the stack for the client listener, in front of `upstream`. Server settings (body
/// limit, timeouts, concurrency) are read once here; they change only with a restart.
pub fn client_stack(
    parts: StackParts,
    upstream: UpstreamClient,
) -> impl Service<
    Request<Incoming>,
    Response = Response<
        impl http_body::Body<Data = bytes::Bytes, Error = impl Into<crate::body::BoxError>>
            + Send
            + 'static,
    >,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let StackParts {
        config,
        limiter,
        budgets,
        recorder,
        meter,
        metering,
        concurrency,
        routes,
    } = parts;
    let server = &config.load().server;
    ServiceBuilder::new()
        // hyper's body becomes the stack's one body type, drained if answered early.
        .map_request(|req: Request<Incoming>| req.map(|body| boxed(DrainOnDrop::new(body))))
        // First, so that every response, errors included, and every log line has the id.
        .layer(RequestIdLayer)
        // Before anything can log a request: Authorization never appears in a trace.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
        ]))
        // One span per request, at debug level (it costs a formatted string per request). The
        // access line itself, with the request id, is written when the call is recorded.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    let id = req
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::debug_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // Failures are logged once, in the call's record, with their request id.
                .on_failure(()),
        )
        // Every request becomes a call, recorded once when it is over (`crate::record`).
        .layer(RecordLayer::new(recorder))
        // Every error below becomes the SPEC §5 JSON response here, and only here.
        .layer(RescueLayer)
        // Over `max_concurrent_requests`: 503 at once rather than a queue; a request counts
        // until its response body has ended.
        .layer(concurrency)
        // Bounds everything below, the wait for the upstream's answer included.
        .layer(TimeoutLayer::new(server.request_timeout))
        // Cheap checks first: a malformed or unknown path never meets authentication.
        .layer(routes)
        .layer(AuthenticateLayer::new(config.clone()))
        .layer(AuthorizeLayer::new(budgets))
        // Only authorized clients get to send bytes; then the body is bounded...
        .layer(BodyLimitLayer::new(server.max_body_bytes))
        // ...and the known routes are checked before any credit is spent.
        .layer(ValidateLayer)
        // Only requests that will be forwarded wait for, and take, an upstream slot.
        .layer(RateLimitLayer::new(limiter))
        // Only the request that goes out carries the upstream key.
        .layer(UpstreamAuthLayer::new(config.clone()))
        // Right above the upstream: sees its answer as it is, times the upstream alone.
        .option_layer(metering.then(|| MeterLayer::new(meter)))
        .service(upstream)
}
