//! Gateway errors: each kind maps to one row of the SPEC §5 table (status, machine code, a human
//! sentence). The rescue layer is the only place one becomes an HTTP response.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body, BoxError};

/// Why the gateway answered instead of the upstream.
#[derive(Clone, Debug)]
pub enum GatewayError {
    /// 400: malformed path, invalid JSON.
    BadRequest(String),
    /// 400 for a request whose body's end is unclear (its `Transfer-Encoding`): the connection
    /// is closed after the answer (`Connection: close`), so nothing after that body is read as
    /// another request.
    BadFraming(String),
    /// 401: no, malformed, unknown or disabled gateway key.
    Unauthenticated(&'static str),
    /// 402: the client's credit budget for the period is spent.
    BudgetExceeded(String),
    /// 403: route or account outside the client's scopes.
    Forbidden(String),
    /// 404: not a gateway path.
    NotFound,
    /// 405: a method the gateway does not forward.
    MethodNotAllowed,
    /// 413: body over `max_body_bytes`.
    PayloadTooLarge { limit: u64 },
    /// 415: validated route without a JSON body.
    UnsupportedMediaType,
    /// 422: validated route, bad fields; `(field, messages)` in a stable order.
    ValidationFailed(Vec<(String, Vec<String>)>),
    /// 429: client limit, upstream budget, or a credit budget held by calls in flight; the
    /// client may retry after this long.
    RateLimited {
        retry_after: Duration,
        /// `client` or `upstream`: whose limit it was; `budget`: what is left of the client's
        /// credit budget is held by its calls in flight.
        scope: &'static str,
        /// Where the client stands, for the `RateLimit-*` headers.
        status: Option<crate::limiter::RateLimitStatus>,
    },
    /// 502: connect failure, broken upstream response.
    UpstreamUnavailable(String),
    /// 503: concurrency limit, or shutting down.
    Overloaded,
    /// 503 `overloaded` too: the client has a credit budget and what it already spent this
    /// period cannot be read from the ledger. Not 402 (the budget may well not be spent) and not
    /// a pass (it may be): a temporary refusal that clients retry, like the other 503s.
    BudgetUnreadable,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::BadFraming(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ValidationFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::Overloaded | Self::BudgetUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable code of SPEC §5.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) | Self::BadFraming(_) => "bad_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ValidationFailed(_) => "validation_failed",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::Overloaded | Self::BudgetUnreadable => "overloaded",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadRequest(why) | Self::BadFraming(why) => format!("Bad request: {why}."),
            Self::Unauthenticated(why) => format!("Unauthenticated: {why}."),
            Self::BudgetExceeded(why) => format!("Credit budget exceeded: {why}."),
            Self::Forbidden(why) => format!("Forbidden: {why}."),
            Self::NotFound => "Not found: this is not a gateway path.".into(),
            Self::MethodNotAllowed => {
                "Method not allowed: use GET, POST, PUT, PATCH or DELETE.".into()
            }
            Self::PayloadTooLarge { limit } => {
                format!("Payload too large: request bodies are limited to {limit} bytes.")
            }
            Self::UnsupportedMediaType => {
                "Unsupported media type: this route takes a JSON body (Content-Type: application/json).".into()
            }
            Self::ValidationFailed(fields) => match fields.first() {
                Some((_, messages)) if !messages.is_empty() => {
                    format!("Validation failed: {}", messages.join(" "))
                }
                _ => "Validation failed: the given data was invalid.".into(),
            },
            Self::RateLimited {
                retry_after, scope, ..
            } if *scope == "budget" => format!(
                "Too many requests: what is left of the client's credit budget is held by its calls in flight; retry after {} ms.",
                retry_after.as_millis().max(1)
            ),
            Self::RateLimited {
                retry_after, scope, ..
            } => format!(
                "Too many requests: the {} rate limit is reached; retry after {} ms.",
                if *scope == "client" { "client's" } else { "upstream" },
                retry_after.as_millis().max(1)
            ),
            Self::UpstreamUnavailable(why) => format!("Upstream unavailable: {why}."),
            Self::Overloaded => "Overloaded: the gateway is at capacity or shutting down; retry shortly.".into(),
            Self::BudgetUnreadable => "Service unavailable: this client's credit budget cannot be checked because the budget ledger cannot be read; retry later.".into(),
            Self::UpstreamTimeout => "Upstream timeout: the upstream did not answer in time.".into(),
        }
    }

    /// The JSON response: `{"error", "code", "request_id"[, "errors"]}`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let mut body = serde_json::json!({
            "error": self.message(),
            "code": self.code(),
            "request_id": request_id,
        });
        if let Self::ValidationFailed(fields) = &self {
            let errors: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(field, msgs)| (field.clone(), serde_json::json!(msgs)))
                .collect();
            body["errors"] = serde_json::Value::Object(errors);
        }
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::RateLimited {
                retry_after,
                status,
                ..
            } => {
                let ms = retry_after.as_millis().max(1);
                let secs = ms.div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
                headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
                if let Some(status) = status {
                    crate::layers::rate_limit::set_status_headers(headers, *status);
                }
            }
            Self::MethodNotAllowed => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
                );
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ofapi-gateway\""),
                );
            }
            // hyper closes an HTTP/1.1 connection after a response that says so (HTTP/2 has no
            // such header and no such request: h2 refuses `Transfer-Encoding` itself).
            Self::BadFraming(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }

    /// Finds the gateway's meaning of an error that travelled down the stack: a `GatewayError`
    /// itself, a tower timeout, a body over its limit or a broken client body (anywhere in its
    /// chain of sources), or anything else (502).
    pub fn from_box(error: BoxError) -> Self {
        match error.downcast::<GatewayError>() {
            Ok(own) => *own,
            Err(other) => Self::classify(other.as_ref()),
        }
    }

    /// The same meaning, for an error that is only borrowed (the meter records it, the rescue
    /// answers it).
    pub fn classify(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(error);
        while let Some(err) = source {
            if let Some(own) = err.downcast_ref::<GatewayError>() {
                return own.clone();
            }
            if err.is::<tower::timeout::error::Elapsed>() {
                return Self::UpstreamTimeout;
            }
            if let Some(limited) = err.downcast_ref::<crate::layers::body_limit::BodyTooLarge>() {
                return Self::PayloadTooLarge { limit: limited.0 };
            }
            if err.is::<crate::layers::drain::ClientBodyError>() {
                return Self::BadRequest("the request body is malformed or was cut short".into());
            }
            source = err.source();
        }
        Self::UpstreamUnavailable("the upstream connection failed".into())
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::body_limit::BodyTooLarge;

    fn status(error: BoxError) -> u16 {
        let by_ref = GatewayError::classify(error.as_ref()).status();
        let owned = GatewayError::from_box(error).status();
        assert_eq!(by_ref, owned, "both ways agree");
        owned.as_u16()
    }

    #[test]
    fn errors_from_below_get_the_spec_status() {
        assert_eq!(status(GatewayError::Forbidden("x".into()).into()), 403);
        assert_eq!(status(Box::new(tower::timeout::error::Elapsed::new())), 504);
        // A body over its limit, however deep in the chain (hyper wraps it, as here).
        #[derive(Debug)]
        struct Wrapped(BodyTooLarge);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error writing a body to the connection")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(status(Box::new(Wrapped(BodyTooLarge(10)))), 413);
        assert_eq!(status("connection reset".into()), 502);
    }
}
