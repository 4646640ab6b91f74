//! The upstream client: each serving thread's pool of connections to the upstream (HTTP/2 when
//! the upstream offers it by ALPN, else HTTP/1.1 keep-alive; see [`pool`]), and the header
//! hygiene of a proxy. Bodies stream both ways untouched. Failures become gateway errors: 502 for
//! connect failures and broken responses (a response head over [`MAX_RESPONSE_HEAD`] included),
//! 504 when the upstream does not answer within `upstream.timeout`. A response body the upstream
//! leaves silent for `upstream.timeout` fails, so the client's response is cut instead of hanging.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::body::{boxed, Body, BoxError};
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::layers::body_limit::BodyTooLarge;
use crate::layers::drain::ClientBodyError;
use pool::{Connector, Pool, SendError};

pub mod facts;
pub mod figures;
mod pool;

/// The largest response head (status line and headers) taken from the upstream over HTTP/1.1; a
/// larger one is a broken response (502), not something to pass on to the client. hyper's own
/// limit is about 400 KiB (its HTTP/2 client already stops at 16 KiB); Envoy's default is 60 KiB.
/// hyper's limit of 100 response headers stays as it is.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Sends requests to the upstream named by `upstream.base_url`. Each serving thread makes its
/// own (its clones share one pool of connections).
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    target: Arc<Target>,
    timeout: Duration,
}

/// Where requests go: the base URL split once, so each request only joins its path.
struct Target {
    /// Path prefix of the base URL, without a trailing slash; usually empty.
    prefix: String,
    /// The `Host` every request carries: the authority without a default port, made once.
    host: HeaderValue,
}

impl UpstreamClient {
    /// A client for `base_url` (normally `config.base_url`; the in-process sandbox's address in
    /// the quickstart) with the rest of `config`'s connection settings.
    pub fn new(config: &UpstreamConfig, base_url: &Uri) -> Result<Self, BoxError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &config.extra_roots {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let scheme = base_url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = base_url
            .authority()
            .cloned()
            .ok_or("upstream.base_url has no host")?;
        let target = Target {
            host: host_header(&scheme, &authority)?,
            prefix: base_url.path().trim_end_matches('/').to_owned(),
        };
        let connector = Connector::new(scheme, authority, tls, config.connect_timeout)?;
        Ok(Self {
            pool: Arc::new(Pool::new(connector)),
            target: Arc::new(target),
            timeout: config.timeout,
        })
    }

    /// The upstream's path and query for the client's: the base URL's path prefix, then the
    /// client's own.
    fn upstream_path(&self, uri: &Uri) -> Result<PathAndQuery, BoxError> {
        Ok(
            match (uri.path_and_query(), self.target.prefix.is_empty()) {
                // The usual case: the client's own path and query, shared, not copied.
                (Some(pq), true) => pq.clone(),
                (None, true) => PathAndQuery::from_static("/"),
                (pq, false) => {
                    let pq = pq.map_or("/", PathAndQuery::as_str);
                    format!("{}{pq}", self.target.prefix).try_into()?
                }
            },
        )
    }
}

/// `Host` for `authority`: as hyper-util's client writes it, the port left out when it is the
/// scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Result<HeaderValue, BoxError> {
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let host = match authority.port_u16() {
        Some(port) if Some(port) != default_port => authority.as_str(),
        _ => authority.host(),
    };
    Ok(HeaderValue::from_str(host)?)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<Body>> for UpstreamClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = self.upstream_path(req.uri());
        req.headers_mut()
            .insert(header::HOST, self.target.host.clone());
        let pool = Arc::clone(&self.pool);
        let timeout = self.timeout;
        Box::pin(async move {
            let sent = pool.send(req, path?);
            let response = match tokio::time::timeout(timeout, sent).await {
                Err(_elapsed) => return Err(GatewayError::UpstreamTimeout.into()),
                Ok(Err(error)) => return Err(classify_send_error(error)),
                Ok(Ok(response)) => response,
            };
            let mut response = response.map(|body| boxed(StallGuard::new(body, timeout)));
            remove_hop_by_hop(response.headers_mut());
            Ok(response)
        })
    }
}

pin_project! {
    /// The upstream's response body, failed when the upstream leaves it silent for `timeout`
    /// while the gateway waits for its next frame. Only waiting counts: a client that reads
    /// slowly does not use up the upstream's time, and a body that keeps coming, however
    /// slowly overall, is never cut. The timer is set up the first time the body has to wait.
    struct StallGuard<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        #[pin]
        stall: Option<Sleep>,
        // The timer runs for the current wait (reset at the first `Pending` after a frame).
        waiting: bool,
        // The body failed for a stall: nothing more comes.
        stalled: bool,
    }
}

impl<B> StallGuard<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            waiting: false,
            stalled: false,
        }
    }
}

impl<B> http_body::Body for StallGuard<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = self.project();
        if *this.stalled {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let mut stall = this.stall;
        if !*this.waiting {
            *this.waiting = true;
            let deadline = Instant::now() + *this.timeout;
            match stall.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(deadline),
                None => stall.set(Some(tokio::time::sleep_until(deadline))),
            }
        }
        if stall
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready())
        {
            *this.stalled = true;
            tracing::debug!("the upstream left its response body silent for upstream.timeout");
            return Poll::Ready(Some(Err(GatewayError::UpstreamTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.stalled || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client body over its limit (413) or broken by the client (400) stays the client's fault;
/// the rest are the upstream's (502).
fn classify_send_error(error: SendError) -> BoxError {
    let error = match error {
        SendError::Connect(error) => {
            tracing::debug!(error = %error, "could not connect to the upstream");
            let why = "could not connect to the upstream";
            return GatewayError::UpstreamUnavailable(why.into()).into();
        }
        SendError::Http(error) => error,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(err) = source {
        if let Some(too_large) = err.downcast_ref::<BodyTooLarge>() {
            return Box::new(BodyTooLarge(too_large.0));
        }
        if err.is::<ClientBodyError>() {
            return GatewayError::classify(err).into();
        }
        source = err.source();
    }
    let why = "the upstream connection failed or sent a broken response";
    tracing::debug!(error = %error, "upstream request failed");
    GatewayError::UpstreamUnavailable(why.into()).into()
}

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which hop-by-hop headers the message has: usually none, or
    // only `Connection` (an HTTP/1.1 upstream's `keep-alive`), and only those are removed (each
    // removal hashes a name). A map's names are lower case, so they compare as names (six of the
    // eight are standard headers, which compare by their tag), not as strings in any case.
    let mut present = [false; 8];
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[at] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // The other headers `Connection` names go too (RFC 9110 §7.6.1). The usual `keep-alive` or
    // `close` names none that the message has, so then no name is made and nothing allocated.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !is_hop_by_hop(token) && headers.contains_key(*token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    let hop_by_hop = HOP_BY_HOP.into_iter().zip(present);
    for name in hop_by_hop.filter_map(|(name, present)| present.then_some(name)) {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

/// The hop-by-hop headers every message loses (those a `Connection` header names come on top).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> UpstreamClient {
        let config = UpstreamConfig {
            base_url: base.parse().unwrap(),
            api_key: crate::config::Secret::new("k".into()),
            api_key_source: "test".into(),
            extra_roots: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            forwarded_headers: Default::default(),
        };
        UpstreamClient::new(&config, &config.base_url).unwrap()
    }

    #[test]
    fn the_path_and_query_go_to_the_upstream_with_its_prefix() {
        let uri: Uri = "/api/whoami?fresh=true".parse().unwrap();
        assert_eq!(
            client("https://app.onlyfansapi.com")
                .upstream_path(&uri)
                .unwrap(),
            "/api/whoami?fresh=true"
        );
        assert_eq!(
            client("http://proxy.internal:8443/ofapi/")
                .upstream_path(&uri)
                .unwrap(),
            "/ofapi/api/whoami?fresh=true"
        );
    }

    #[test]
    fn host_leaves_out_only_the_schemes_default_port() {
        for (base, host) in [
            ("https://app.onlyfansapi.com", "app.onlyfansapi.com"),
            ("https://app.onlyfansapi.com:443", "app.onlyfansapi.com"),
            (
                "https://app.onlyfansapi.com:8443",
                "app.onlyfansapi.com:8443",
            ),
            ("http://127.0.0.1:80/x", "127.0.0.1"),
            ("http://127.0.0.1:443", "127.0.0.1:443"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(client(base).target.host, host, "{base}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_silent_for_the_timeout_fails_and_one_that_keeps_coming_does_not() {
        use bytes::Bytes;
        use futures_util::stream;
        use http_body::Frame;
        use http_body_util::{BodyExt, StreamBody};

        let timeout = Duration::from_secs(5);
        let silent = StreamBody::new(stream::pending::<Result<Frame<Bytes>, BoxError>>());
        let started = Instant::now();
        let error = StallGuard::new(silent, timeout)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), timeout);
        assert!(error.to_string().contains("upstream_timeout"), "{error}");

        // Ten pieces a second apart: twice the timeout in all, never silent for long.
        let steady = StreamBody::new(stream::unfold(0, |i| async move {
            if i == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        }));
        let started = Instant::now();
        let body = StallGuard::new(steady, timeout).collect().await.unwrap();
        assert_eq!(body.to_bytes().len(), 10);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_headers_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::UPGRADE, "h2c".parse().unwrap());
        headers.insert("idempotency-key", "k1".parse().unwrap());
        headers.insert(header::IF_NONE_MATCH, "\"e\"".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(headers.contains_key("idempotency-key"));
        assert!(headers.contains_key(header::IF_NONE_MATCH));
    }

    #[test]
    fn headers_connection_names_go_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, "Close, X-Private".parse().unwrap());
        headers.append(header::CONNECTION, "KEEP-ALIVE,x-other".parse().unwrap());
        for name in ["x-private", "x-other", "keep-alive", "close", "x-kept"] {
            headers.insert(name, "1".parse().unwrap());
        }
        remove_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_goes_even_alone() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, "x".parse().unwrap());
            headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            remove_hop_by_hop(&mut headers);
            let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["content-type"], "{name}");
        }
    }
}
