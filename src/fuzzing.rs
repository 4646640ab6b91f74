//! Entry points for the fuzz targets in `fuzz/`, not part of the gateway's API.
//!
//! The functions that read hostile input (the path check, the route template, the `Authorization`
//! parsers, the tracking-link body check, the `_meta` scanner and the `next_page` rewriter) are
//! partly private to their layers. The fuzz crate is a separate crate, so it can only reach them
//! through something public; this module is that something, hidden from the docs and kept to
//! re-exports and one-line wrappers so that what is fuzzed is exactly what the layers run.

use http::HeaderValue;

use crate::error::GatewayError;

pub use crate::layers::authenticate::bearer_token;
pub use crate::layers::meter::rewrite::NextPageRewriter;
pub use crate::layers::meter::scan::MetaScanner;
pub use crate::layers::route::{check_path, classify, RouteInfo, RouteKind};
pub use crate::layers::validate::tracking_link_errors;
pub use crate::upstream::facts::UpstreamFacts;

/// The validate layer's verdict on a `PUT .../tracking-links/{id}` body: `Ok` means forwarded
/// as sent, `BadRequest` is 400 (not JSON), `ValidationFailed` is 422.
pub fn check_update_body(bytes: &[u8]) -> Result<(), GatewayError> {
    crate::layers::validate::check_update_body(bytes)
}

/// The validate layer's fast path alone (no JSON tree): `true` only for bodies that pass.
pub fn is_valid_update_fast(bytes: &[u8]) -> bool {
    crate::layers::validate::is_valid_update(bytes)
}

/// Whether the validate layer takes a `Content-Type` value as JSON.
pub fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    crate::layers::validate::is_json(value)
}

/// The token the admin listener reads from its `Authorization` header, if any.
pub fn admin_bearer(value: &HeaderValue) -> Option<&str> {
    crate::admin::admin_bearer(value)
}
