//! The admin listener (loopback by default): `/healthz` (the process is up), `/readyz` (ready to
//! forward: the upstream key is loaded and the gateway is not shutting down).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::Service;

use crate::body::{full, Body};
use crate::stack::SharedConfig;

pub fn service(
    config: SharedConfig,
    ready: Arc<AtomicBool>,
) -> impl Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<Incoming>| {
        let response = answer(&req, &config, &ready);
        async move { Ok::<_, Infallible>(response) }
    })
}

fn answer(req: &Request<Incoming>, config: &SharedConfig, ready: &AtomicBool) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"Method not allowed.","code":"method_not_allowed"}"#.into(),
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/readyz" => {
            let key_loaded = !config.load().upstream.api_key.expose().is_empty();
            if !ready.load(Ordering::SeqCst) {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","reason":"shutting down"}"#.into(),
                )
            } else if !key_loaded {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","reason":"upstream key not loaded"}"#.into(),
                )
            } else {
                json(StatusCode::OK, r#"{"status":"ready"}"#.into())
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"Not found.","code":"not_found"}"#.into(),
        ),
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
