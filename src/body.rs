//! The one body type of the whole stack, and the one error alias.
//!
//! Every layer speaks `Request<Body>` / `Response<Body>`, so layers compose in any order and test
//! with `service_fn`. Boxing costs one allocation per body; the bytes themselves are never copied.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// The error type that travels down the stack to the rescue layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed, streaming body (`Send`, not `Sync`: hyper needs no more).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body holding these bytes (a JSON error, a small validated request).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON answer that is not content-encoded: the only kind whose `_meta` can be read.
pub fn is_json(headers: &http::HeaderMap) -> bool {
    use http::header;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    json && headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}
