//! Routing: the request-head and path-safety checks (400, never forwarded), `/healthz`, 404
//! outside `/api/`, the method check (405), and the route's template and account for the layers
//! below (scopes, validation, metrics labels, logs).
//!
//! Route templates keep the path's words, and the route layer runs before authentication, so
//! anyone could invent routes (`/api/aaa`, `/api/aab`...). Each distinct template is a metrics
//! series kept for the life of the process; [`RouteNames`] caps how many there can be.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_util::future::{ready, Either};
use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use tower::{Layer, Service};

use super::{reject, EarlyOr};
use crate::body::{full, Body, BoxError};
use crate::call::Call;
use crate::error::GatewayError;

/// What the route layer learned about a request; in its extensions from here on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// `PUT /api/fansly/{account}/tracking-links/{id}`: accounts and ids replaced, so it can
    /// label metrics and ledger rows without growing with every id.
    pub template: Arc<str>,
    /// The account the path names (percent-decoded), if any.
    pub account: Option<String>,
    pub kind: RouteKind,
}

/// Routes the gateway knows more about than "forward it".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `PUT /api/fansly/{account}/tracking-links/{id}`: body validated before forwarding.
    UpdateTrackingLink,
    Other,
}

/// Distinct route templates (metrics series) there may be; the real API has a few hundred
/// method-and-route pairs at most.
pub const MAX_ROUTE_TEMPLATES: usize = 1000;

/// The route templates seen so far, each stored once and shared by every request that has it.
/// Past `max` distinct ones, a new template is named `{METHOD} /api/{other}` instead, so invented
/// paths cannot grow the metrics (or the per-route cost estimates) without end.
#[derive(Debug)]
pub struct RouteNames {
    known: RwLock<HashSet<Arc<str>>>,
    max: usize,
}

impl RouteNames {
    pub fn new(max: usize) -> Self {
        Self {
            known: RwLock::new(HashSet::new()),
            max,
        }
    }

    /// The shared name of `template`: itself the first `max` times a new one is seen, then
    /// `{METHOD} /api/{other}` for any template not seen before.
    pub fn name(&self, method: &Method, template: &str) -> Arc<str> {
        let read = self.known.read().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = read.get(template) {
            return Arc::clone(known);
        }
        drop(read);
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = known.get(template) {
            return Arc::clone(existing);
        }
        if known.len() < self.max {
            let template: Arc<str> = Arc::from(template);
            known.insert(Arc::clone(&template));
            if known.len() == self.max {
                tracing::warn!(
                    max = self.max,
                    "this many distinct routes seen; new ones are labelled /api/{{other}}"
                );
            }
            return template;
        }
        // The overflow names (one per forwarded method) are stored once, past `max`.
        let other = format!("{method} /api/{{other}}");
        if let Some(existing) = known.get(other.as_str()) {
            return Arc::clone(existing);
        }
        let other: Arc<str> = Arc::from(other);
        known.insert(Arc::clone(&other));
        other
    }
}

#[derive(Clone, Debug)]
pub struct RouteLayer {
    names: Arc<RouteNames>,
}

impl RouteLayer {
    pub fn new(max_templates: usize) -> Self {
        Self {
            names: Arc::new(RouteNames::new(max_templates)),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            names: Arc::clone(&self.names),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route<S> {
    inner: S,
    names: Arc<RouteNames>,
}

impl<S> Service<Request<Body>> for Route<S>
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
        if let Err(why) = check_framing(&req) {
            return reject(GatewayError::BadFraming(format!(
                "malformed request: {why}"
            )));
        }
        if let Err(why) = check_head(&req) {
            return reject(GatewayError::BadRequest(format!(
                "malformed request: {why}"
            )));
        }
        let path = req.uri().path();
        if let Err(why) = check_path(path) {
            return reject(GatewayError::BadRequest(format!("malformed path: {why}")));
        }
        if path == "/healthz" {
            return match *req.method() {
                Method::GET | Method::HEAD => Either::Left(ready(Ok(healthz()))),
                _ => reject(GatewayError::MethodNotAllowed),
            };
        }
        if !path.starts_with("/api/") {
            return reject(GatewayError::NotFound);
        }
        if !is_forwarded_method(req.method()) {
            return reject(GatewayError::MethodNotAllowed);
        }
        let (template, account, kind) = read_route(req.method(), path);
        let info = RouteInfo {
            template: self.names.name(req.method(), &template),
            account,
            kind,
        };
        if let Some(call) = req.extensions().get::<Call>() {
            call.set_route(&info.template, info.account.as_deref());
        }
        req.extensions_mut().insert(info);
        Either::Right(self.inner.call(req))
    }
}

fn healthz() -> Response<Body> {
    let mut response = Response::new(full(r#"{"status":"ok"}"#));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn is_forwarded_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Refuses request heads that the gateway and the servers around it could read differently
/// (RFC 9112 §3.2 and §6.1), and that hyper lets through:
///
/// - more than one `Host`, or one that is not a host and port: which one would the next hop use?
///   (Host is not forwarded, but logs and the next hop around the gateway may read it.)
/// - an HTTP/1.1 request without `Host` (the RFC says 400; HTTP/1.0 and h2 may leave it out);
/// - raw non-ASCII bytes in the query (hyper lets UTF-8 through; a URI has none).
///
/// The body's framing is [`check_framing`]'s.
pub fn check_head<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("more than one Host header"),
        (Some(host), None) => {
            let bytes = host.as_bytes();
            if !bytes.is_empty() && (bytes.contains(&b'@') || Authority::try_from(bytes).is_err()) {
                return Err("the Host header is not a host name and port");
            }
        }
        (None, _) => {
            if req.version() == Version::HTTP_11 {
                return Err("an HTTP/1.1 request needs a Host header");
            }
        }
    }
    if !req.uri().query().is_none_or(str::is_ascii) {
        return Err("raw non-ASCII bytes in the query (percent-encode them)");
    }
    Ok(())
}

/// Refuses a `Transfer-Encoding` other than one `chunked`: hyper refuses a last coding other than
/// `chunked` but decodes only `chunked` itself, so `gzip, chunked` would reach the upstream still
/// gzipped, with the header that said so removed as hop-by-hop. Where such a body ends is what
/// the servers in front of the gateway may read differently, so the refusal also closes the
/// connection ([`GatewayError::BadFraming`]): whatever follows is never read as a request.
///
/// (A request with both `Content-Length` and `Transfer-Encoding` never gets here as such: hyper
/// frames it by `Transfer-Encoding` alone, drops `Content-Length`, and closes the connection
/// after the response, so no byte after the chunked body is read as another request.)
pub fn check_framing<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(coding), None)
            if coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked") =>
        {
            Ok(())
        }
        _ => Err("the only Transfer-Encoding accepted is chunked"),
    }
}

/// Refuses paths that could mean something else to the upstream than to the gateway's scope
/// checks: dot segments (also percent-encoded), encoded slashes or backslashes, backslashes,
/// empty segments, control characters, broken percent-encoding, raw non-ASCII bytes (hyper lets
/// UTF-8 through; a URI has none), and percent-encoded bytes that are not UTF-8 (decoded lossily,
/// `acct%fe` and `acct%ff` would name the same account).
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with /");
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("empty path segment");
        }
        let mut dots_only = true;
        let mut ascii = true;
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let byte = match bytes[i] {
                b'%' => {
                    let (Some(hi), Some(lo)) = (
                        bytes.get(i + 1).and_then(|b| hex_value(*b)),
                        bytes.get(i + 2).and_then(|b| hex_value(*b)),
                    ) else {
                        return Err("invalid percent-encoding");
                    };
                    i += 3;
                    let decoded = hi << 4 | lo;
                    if decoded == b'/' || decoded == b'\\' {
                        return Err("encoded slash");
                    }
                    decoded
                }
                other if other.is_ascii() => {
                    i += 1;
                    other
                }
                _ => return Err("raw non-ASCII bytes (percent-encode them)"),
            };
            if byte == b'\\' {
                return Err("backslash");
            }
            if byte < 0x20 || byte == 0x7f {
                return Err("control character");
            }
            dots_only &= byte == b'.';
            ascii &= byte.is_ascii();
        }
        if dots_only {
            return Err("dot segment");
        }
        if !ascii && std::str::from_utf8(&percent_decode(segment)).is_err() {
            return Err("percent-encoded bytes that are not UTF-8");
        }
    }
    Ok(())
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a segment that [`check_path`] accepted, so it is UTF-8 (borrowed when it has
/// no escape; should anything else get here, bytes that are not UTF-8 become U+FFFD).
fn decode_segment(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    Cow::Owned(String::from_utf8_lossy(&percent_decode(segment)).into_owned())
}

/// The bytes a segment's percent-encoding stands for (a `%` not followed by two hex digits stays).
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(hi), Some(lo)) => match (hex_value(*hi), hex_value(*lo)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The route template and account of a safe `/api/...` path.
///
/// Fansly paths name their account third (`/api/fansly/{account}/...`), OnlyFans paths second
/// when it looks like an account id (`/api/acct_.../...`). Any other segment holding a digit is an
/// id. Team paths (`/api/whoami`) keep their words.
///
/// All of it is read from the percent-decoded segments, because that is what the upstream routes
/// on: `/api/%66ansly/x/tracking%2Dlinks/1` is the tracking-link update of account `x` there, so
/// it must be here too (its account scope checked, its body validated, one template for every
/// spelling).
pub fn classify(method: &Method, path: &str) -> RouteInfo {
    let (template, account, kind) = read_route(method, path);
    RouteInfo {
        template: template.into(),
        account,
        kind,
    }
}

/// [`classify`] in one pass over the segments, with the template still a `String` (the route
/// layer looks it up among the shared names rather than making a new one per request).
fn read_route(method: &Method, path: &str) -> (String, Option<String>, RouteKind) {
    let mut template = String::with_capacity(method.as_str().len() + path.len() + 8);
    template.push_str(method.as_str());
    template.push(' ');
    let mut account = None;
    // What the segments before the current one said: `/api/...`, `/api/fansly/...`, and for
    // the tracking-link update, `/api/fansly/{account}/tracking-links/{id}`.
    let (mut api, mut fansly, mut tracking_links) = (false, false, false);
    let mut count = 0;
    for (i, raw) in path.trim_start_matches('/').split('/').enumerate() {
        let segment = decode_segment(raw);
        let is_account = match i {
            1 => api && segment.starts_with("acct_"),
            2 => fansly,
            _ => false,
        };
        match i {
            0 => api = segment == "api",
            1 => fansly = api && segment == "fansly",
            3 => tracking_links = fansly && segment == "tracking-links",
            _ => {}
        }
        template.push('/');
        if is_account {
            template.push_str("{account}");
            account = Some(segment.into_owned());
        } else if segment.bytes().any(|b| b.is_ascii_digit()) {
            template.push_str("{id}");
        } else {
            template.push_str(&segment);
        }
        count = i + 1;
    }
    let kind = if *method == Method::PUT && tracking_links && count == 5 {
        RouteKind::UpdateTrackingLink
    } else {
        RouteKind::Other
    };
    (template, account, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for path in [
            "/api/../admin",
            "/api/./x",
            "/api/%2e%2e/x",
            "/api/%2E./x",
            "/api/.%2e",
            "/api/a%2fb",
            "/api/a%2Fb",
            "/api/a%5cb",
            "/api/a\\b",
            "/api//x",
            "/api/x/",
            "/api/a%00b",
            "/api/a%0ab",
            "/api/a%zz",
            "/api/a%2",
            "api/x",
            "/api/a%ffb",
            "/api/fansly/acct%fe/x",
            "/api/%c3",
            "/api/%c3%28",
            "/api/%ed%a0%80",
            "/api/caf\u{e9}",
        ] {
            assert!(check_path(path).is_err(), "{path} should be refused");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/healthz",
            "/api/whoami",
            "/api/fansly/fansly_acct_1/tracking-links/845759434926862336",
            "/api/fansly/acct%20x/tracking-links",
            "/api/a.b/c..d",
            "/api/fansly/acct%c3%a9/tracking-links",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    fn head(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/api/whoami").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        for (version, headers) in [
            (Version::HTTP_11, &[][..]),
            (Version::HTTP_11, &[("host", "a"), ("host", "b")][..]),
            (Version::HTTP_2, &[("host", "a"), ("host", "a")][..]),
            (Version::HTTP_11, &[("host", "a/b")][..]),
            (Version::HTTP_11, &[("host", "a b")][..]),
            (Version::HTTP_11, &[("host", "user@a")][..]),
        ] {
            assert!(
                check_head(&head(version, headers)).is_err(),
                "{version:?} {headers:?}"
            );
        }
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_refused() {
        for codings in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "identity, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ][..],
            &[("transfer-encoding", "identity")][..],
        ] {
            assert!(
                check_framing(&head(Version::HTTP_11, codings)).is_err(),
                "{codings:?}"
            );
        }
        for codings in [
            &[][..],
            &[("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "Chunked ")][..],
        ] {
            assert_eq!(
                check_framing(&head(Version::HTTP_11, codings)),
                Ok(()),
                "{codings:?}"
            );
        }
    }

    #[test]
    fn route_names_are_shared_and_capped() {
        let names = RouteNames::new(2);
        let name = |method: &Method, t: &str| names.name(method, t);
        let first = name(&Method::GET, "GET /api/whoami");
        // The same template again is the stored one, not a new allocation.
        assert!(Arc::ptr_eq(&first, &name(&Method::GET, "GET /api/whoami")));
        assert_eq!(&*name(&Method::PUT, "PUT /api/a"), "PUT /api/a");
        // The cap is reached: new templates get the method's overflow name...
        assert_eq!(&*name(&Method::GET, "GET /api/b"), "GET /api/{other}");
        assert_eq!(&*name(&Method::GET, "GET /api/c"), "GET /api/{other}");
        assert_eq!(&*name(&Method::POST, "POST /api/d"), "POST /api/{other}");
        // ...while the known ones keep theirs.
        assert_eq!(&*name(&Method::PUT, "PUT /api/a"), "PUT /api/a");
        assert_eq!(&*name(&Method::GET, "GET /api/whoami"), "GET /api/whoami");
        let stored = names.known.read().unwrap().len();
        assert_eq!(stored, 4, "two templates and two overflow names");
    }

    #[test]
    fn ordinary_heads_pass() {
        for (version, headers) in [
            (Version::HTTP_11, &[("host", "gw.example:8080")][..]),
            (Version::HTTP_11, &[("host", "[::1]:8080")][..]),
            (Version::HTTP_11, &[("host", "")][..]),
            (Version::HTTP_10, &[][..]),
            (Version::HTTP_2, &[][..]),
        ] {
            assert_eq!(
                check_head(&head(version, headers)),
                Ok(()),
                "{version:?} {headers:?}"
            );
        }
    }

    #[test]
    fn tracking_link_update_gets_its_template_and_account() {
        let info = classify(
            &Method::PUT,
            "/api/fansly/fansly_acct_123/tracking-links/845759434926862336",
        );
        assert_eq!(
            &*info.template,
            "PUT /api/fansly/{account}/tracking-links/{id}"
        );
        assert_eq!(info.account.as_deref(), Some("fansly_acct_123"));
        assert_eq!(info.kind, RouteKind::UpdateTrackingLink);
    }

    #[test]
    fn other_routes_get_templates_without_ids() {
        let info = classify(&Method::GET, "/api/acct_abc/chats/12345/messages");
        assert_eq!(&*info.template, "GET /api/{account}/chats/{id}/messages");
        assert_eq!(info.account.as_deref(), Some("acct_abc"));
        assert_eq!(info.kind, RouteKind::Other);

        let info = classify(&Method::GET, "/api/whoami");
        assert_eq!(&*info.template, "GET /api/whoami");
        assert_eq!(info.account, None);

        let info = classify(&Method::GET, "/api/fansly/acct%5Fx/tracking-links/7/stats");
        assert_eq!(info.account.as_deref(), Some("acct_x"));
        assert_eq!(info.kind, RouteKind::Other);
    }

    #[test]
    fn percent_encoded_spellings_name_the_same_route_and_account() {
        // The upstream decodes before routing; so does the template, the account and the kind.
        let plain = classify(&Method::PUT, "/api/fansly/acct_x/tracking-links/7");
        for path in [
            "/api/%66ansly/acct_x/tracking-links/7",
            "/api/fansly/acct%5Fx/tracking%2Dlinks/7",
            "/api/%66%61%6E%73%6C%79/%61cct_x/%74racking-links/%37",
        ] {
            assert_eq!(classify(&Method::PUT, path), plain, "{path}");
        }
        let info = classify(&Method::GET, "/api/acct%5Fother/chats");
        assert_eq!(info.account.as_deref(), Some("acct_other"));
        assert_eq!(&*info.template, "GET /api/{account}/chats");
        // Bytes that are not UTF-8 are replaced, never passed on raw.
        let info = classify(&Method::GET, "/api/fansly/%ff/x");
        assert_eq!(info.account.as_deref(), Some("\u{fffd}"));
    }

    /// Property tests: the path check and the template on generated paths (the fuzz targets in
    /// `fuzz/` explore arbitrary bytes; these run in every `cargo test`).
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A segment any server reads as itself: unreserved characters, not dots alone.
        fn safe_segment() -> impl Strategy<Value = String> {
            "[A-Za-z0-9._~-]{1,12}".prop_filter("dots alone", |s| !s.bytes().all(|b| b == b'.'))
        }

        /// `s` with every byte percent-encoded.
        fn encode_all(s: &str) -> String {
            s.bytes().map(|b| format!("%{b:02X}")).collect()
        }

        /// Segments that must be refused wherever they appear.
        const UNSAFE: &[&str] = &[
            "", ".", "..", "...", "%2e", "%2E%2e", ".%2e", "%2e.", "a%2fb", "a%2Fb", "%2f",
            "a%5cb", "a%5Cb", "a\\b", "a%00b", "a%0ab", "a%7fb", "a%1Fb", "a%zz", "a%2", "a%",
            "a\tb",
        ];

        proptest! {
            #[test]
            fn a_path_of_safe_segments_passes_in_any_spelling(
                segments in prop::collection::vec(safe_segment(), 1..6),
                encode in prop::collection::vec(any::<bool>(), 6),
            ) {
                let plain = format!("/{}", segments.join("/"));
                prop_assert_eq!(check_path(&plain), Ok(()));
                let spelled: Vec<String> = segments
                    .iter()
                    .zip(&encode)
                    .map(|(s, &e)| if e { encode_all(s) } else { s.clone() })
                    .collect();
                let spelled = format!("/{}", spelled.join("/"));
                prop_assert_eq!(check_path(&spelled), Ok(()));
                // Each segment decodes back to what it was.
                for (raw, original) in spelled.split('/').skip(1).zip(&segments) {
                    prop_assert_eq!(&*decode_segment(raw), original.as_str());
                }
            }

            #[test]
            fn an_unsafe_segment_anywhere_is_refused(
                segments in prop::collection::vec(safe_segment(), 0..5),
                at in any::<prop::sample::Index>(),
                bad in prop::sample::select(UNSAFE),
            ) {
                let mut segments = segments;
                segments.insert(at.index(segments.len() + 1), bad.to_owned());
                let path = format!("/api/{}", segments.join("/"));
                prop_assert!(check_path(&path).is_err(), "{} passed", path);
            }

            #[test]
            fn the_template_holds_no_id_or_account_in_any_spelling(
                account in safe_segment(),
                id in "[0-9]{1,20}",
                tail in prop::collection::vec("[a-z-]{1,10}", 0..3),
                encode in prop::collection::vec(any::<bool>(), 8),
                onlyfans in any::<bool>(),
            ) {
                let account = if onlyfans { format!("acct_{account}") } else { account };
                let mut segments = if onlyfans {
                    vec!["api".to_owned(), account.clone(), "chats".to_owned(), id]
                } else {
                    vec!["api".to_owned(), "fansly".to_owned(), account.clone(),
                         "tracking-links".to_owned(), id]
                };
                segments.extend(tail.iter().cloned());
                let plain = format!("/{}", segments.join("/"));
                let info = classify(&Method::PUT, &plain);
                let words: Vec<String> = std::iter::once("PUT /api".to_owned())
                    .chain(if onlyfans {
                        vec!["{account}".to_owned(), "chats".to_owned(), "{id}".to_owned()]
                    } else {
                        vec!["fansly".to_owned(), "{account}".to_owned(),
                             "tracking-links".to_owned(), "{id}".to_owned()]
                    })
                    .chain(tail.iter().cloned())
                    .collect();
                prop_assert_eq!(&*info.template, words.join("/"));
                prop_assert_eq!(info.account.as_deref(), Some(account.as_str()));
                let update = !onlyfans && tail.is_empty();
                prop_assert_eq!(info.kind == RouteKind::UpdateTrackingLink, update);

                // Any segment but the first may be percent-encoded: the same route.
                let spelled: Vec<String> = segments
                    .iter()
                    .enumerate()
                    .map(|(i, s)| if i > 0 && encode[i % encode.len()] { encode_all(s) } else { s.clone() })
                    .collect();
                let spelled = format!("/{}", spelled.join("/"));
                prop_assert_eq!(check_path(&spelled), Ok(()));
                prop_assert_eq!(classify(&Method::PUT, &spelled), info);
            }
        }
    }
}
