//! The admin listener (loopback by default, SPEC §4, §7, §8):
//!
//! - `/healthz`: the process is up.
//! - `/readyz`: ready to forward: the upstream key is loaded, the gateway is not shutting down,
//!   the ledger (when there is one) is writable, and every credit budget's spend could be read
//!   from it; otherwise 503 with the reason.
//! - `/metrics`: the Prometheus metrics, OpenMetrics text.
//! - `/usage?since=24h&by=client&format=json`: credit spend from the ledger file, as the `usage`
//!   command reports it (`format` also `csv` or `table`). Rows reach the file in batches, so a
//!   call made in the last fraction of a second may not be counted yet.
//!
//! When `[admin] token_env` is set, `/metrics` and `/usage` need `Authorization: Bearer <token>`
//! (401 otherwise); the probes never do, so orchestrators need no secret. Errors are JSON
//! `{"error", "code"}` like the client listener's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::Service;

use crate::body::{full, Body};
use crate::budget::Budgets;
use crate::ledger::{self, Format, GroupBy, Ledger, LedgerHealth};
use crate::metrics::{self, Metrics};
use crate::stack::SharedConfig;

/// What the admin listener reports on.
#[derive(Clone)]
pub struct AdminState {
    /// The live config: the upstream key (`/readyz`) and the admin token are read per request.
    pub config: SharedConfig,
    /// Cleared when a graceful stop begins, so load balancers stop sending traffic.
    pub ready: Arc<AtomicBool>,
    pub metrics: Metrics,
    /// The ledger `/usage` reads and `/readyz` watches; `None`: `/usage` answers 503.
    pub ledger: Option<Ledger>,
    /// The credit budgets, whose spend `/readyz` needs read from the ledger.
    pub budgets: Option<Budgets>,
}

pub fn service(
    state: AdminState,
) -> impl Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let state = Arc::new(state);
    tower::service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(answer(req, &state).await) }
    })
}

async fn answer(req: Request<Incoming>, state: &AdminState) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed.",
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/readyz" => readyz(state),
        "/metrics" => {
            if let Some(refused) = authenticate(&req, state) {
                return refused;
            }
            if let Some(ledger) = &state.ledger {
                state.metrics.ledger_dropped(ledger.dropped());
            }
            with_type(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                state.metrics.render(),
            )
        }
        "/usage" => {
            if let Some(refused) = authenticate(&req, state) {
                return refused;
            }
            usage(req.uri().query().unwrap_or(""), state.ledger.as_ref()).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "Not found."),
    }
}

fn readyz(state: &AdminState) -> Response<Body> {
    let unavailable = |reason: &str| {
        let body = serde_json::json!({ "status": "unavailable", "reason": reason });
        json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
    };
    if !state.ready.load(Ordering::SeqCst) {
        return unavailable("shutting down");
    }
    if state.config.load().upstream.api_key.expose().is_empty() {
        return unavailable("upstream key not loaded");
    }
    if let Some(LedgerHealth::Failing { reason }) = state.ledger.as_ref().map(Ledger::health) {
        return unavailable(&format!("ledger: {reason}"));
    }
    if let Some(reason) = state.budgets.as_ref().and_then(Budgets::unread_reason) {
        return unavailable(&format!(
            "budgets: what budgeted clients spent this period cannot be read from the ledger \
             (they are refused until it can): {reason}"
        ));
    }
    json(StatusCode::OK, r#"{"status":"ready"}"#.into())
}

/// `None` when the request may pass: no token configured, or the right bearer token.
fn authenticate(req: &Request<Incoming>, state: &AdminState) -> Option<Response<Body>> {
    let config = state.config.load();
    let token = config.admin.token.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(admin_bearer);
    let Some(given) = given else {
        return Some(unauthenticated(
            "Authentication required: send Authorization: Bearer <admin token>.",
        ));
    };
    // Compare digests, in constant time: neither the token's bytes nor its length leak.
    let expected = Sha256::digest(token.expose().as_bytes());
    let given = Sha256::digest(given.as_bytes());
    if bool::from(expected.ct_eq(&given)) {
        None
    } else {
        Some(unauthenticated("Authentication failed: wrong admin token."))
    }
}

/// The token of an admin `Authorization: Bearer <token>` (scheme case-insensitive, the token
/// trimmed); it is only ever compared with the configured one, so it may be anything.
pub(crate) fn admin_bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, rest) = value.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn unauthenticated(message: &str) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthenticated", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `GET /usage`: `since` (default `24h`), `by` (default `client`), `format` (default `json`).
async fn usage(query: &str, ledger: Option<&Ledger>) -> Response<Body> {
    let mut since = "24h".to_owned();
    let mut by = GroupBy::Client;
    let mut format = Format::Json;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = match percent_decode(value) {
            Some(v) => v,
            None => return bad_request(format!("invalid {name}: bad percent-encoding")),
        };
        let parsed = match name {
            "since" => {
                since = value;
                Ok(())
            }
            "by" => value.parse().map(|v| by = v),
            "format" => value.parse().map(|v| format = v),
            other => Err(format!(
                "unknown parameter {other:?}: expected since, by or format"
            )),
        };
        if let Err(message) = parsed {
            return bad_request(message);
        }
    }
    let since_ms = match ledger::parse_since(&since, crate::ledger::now_ms()) {
        Ok(ms) => ms,
        Err(message) => return bad_request(message),
    };
    let Some(ledger) = ledger else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            "No ledger: usage is reported from the ledger, which this gateway does not run.",
        );
    };
    // SQLite is blocking: read on the blocking pool, not on the runtime's workers.
    let path = ledger.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || ledger::usage(&path, since_ms, by)).await;
    match report {
        Ok(Ok(report)) => {
            let content_type = match format {
                Format::Json => "application/json",
                Format::Csv => "text/csv; charset=utf-8",
                Format::Table => "text/plain; charset=utf-8",
            };
            with_type(StatusCode::OK, content_type, report.render(format))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "admin /usage: reading the ledger failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                &format!("Reading the ledger failed: {e}"),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "admin /usage: the report task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Reading the ledger failed.",
            )
        }
    }
}

/// Decodes a query value: `+` is a space, `%XX` a byte; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn bad_request(message: String) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", &message)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message, "code": code });
    json(status, body.to_string())
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    with_type(status, "application/json", body)
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("24h").as_deref(), Some("24h"));
        assert_eq!(
            percent_decode("2026-11-01T14%3A00%3A00%2B02%3A00").as_deref(),
            Some("2026-11-01T14:00:00+02:00")
        );
        assert_eq!(percent_decode("1h+30m").as_deref(), Some("1h 30m"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
