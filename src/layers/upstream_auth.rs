//! Upstream credentials: the client's own credentials and the hop-by-hop headers go; the shared
//! upstream key goes on as `Authorization: Bearer <key>` (marked sensitive, so no `Debug` or
//! trace of the request can show it). Runs last before the upstream client, so no layer above
//! ever holds a request that carries the upstream key.
//!
//! The proxy headers a client sends (`Forwarded`, `X-Forwarded-For`, `-Host`, `-Proto`,
//! `X-Real-IP`) go too: they are the client's unchecked claims, and passed on they would let any
//! client tell the upstream it is some other address. With `upstream.forwarded_headers =
//! "replace"`, `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` then say what the gateway
//! saw: the address the connection came from (the [`ClientConnection`] the server put in the
//! request's extensions) and the listener's scheme.

use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::ForwardedHeaders;
use crate::stack::SharedConfig;
use crate::upstream::remove_hop_by_hop;

/// The connection a request came on, as the server saw it; in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConnection {
    /// The peer's address: the client, or the last proxy in front of the gateway.
    pub peer: SocketAddr,
    /// Whether the client listener terminated TLS on it.
    pub tls: bool,
}

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
        let config = self.config.load();
        let connection = match config.upstream.forwarded_headers {
            ForwardedHeaders::Strip => None,
            ForwardedHeaders::Replace => req.extensions().get::<ClientConnection>().copied(),
        };
        let headers = req.headers_mut();
        remove_hop_by_hop(headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::PROXY_AUTHORIZATION);
        remove_forwarding(headers);
        if let Some(connection) = connection {
            say_what_the_gateway_saw(headers, connection);
        }
        // The client's Host names the gateway: the upstream client replaces it with the upstream's.
        if let Some(value) = config.upstream.api_key.bearer_header() {
            headers.insert(header::AUTHORIZATION, value);
        }
        self.inner.call(req)
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDING_COUNT: usize = 5;

/// The headers by which a proxy tells the next hop who its client was.
const FORWARDING: [HeaderName; FORWARDING_COUNT] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    HeaderName::from_static("x-forwarded-host"),
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-real-ip"),
];

/// Removes every [`FORWARDING`] header. One pass over the names first: a request usually has
/// none, and then nothing is hashed.
fn remove_forwarding(headers: &mut HeaderMap) {
    let mut present = [false; FORWARDING_COUNT];
    for name in headers.keys() {
        if let Some(at) = FORWARDING.iter().position(|known| known == name) {
            present[at] = true;
        }
    }
    for (name, present) in FORWARDING.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// `Forwarded: for=...;proto=...` (RFC 7239, an IPv6 address quoted in brackets), and the
/// `X-Forwarded-For` / `X-Forwarded-Proto` pair many services read instead.
fn say_what_the_gateway_saw(headers: &mut HeaderMap, connection: ClientConnection) {
    // An IPv4 client of a dual-stack listener shows as itself, not as `::ffff:a.b.c.d`.
    let ip = connection.peer.ip().to_canonical();
    let proto = if connection.tls { "https" } else { "http" };
    let forwarded = match ip {
        IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
    };
    // An address and a scheme are always valid header text.
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(peer: &str, tls: bool) -> ClientConnection {
        ClientConnection {
            peer: peer.parse().unwrap(),
            tls,
        }
    }

    #[test]
    fn every_forwarding_header_is_removed_in_every_spelling() {
        let mut headers = HeaderMap::new();
        for name in [
            "Forwarded",
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-FORWARDED-PROTO",
            "X-Real-IP",
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("203.0.113.9"),
            );
        }
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        remove_forwarding(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-kept"], "yes");
    }

    #[test]
    fn what_the_gateway_saw_is_written_for_ipv4_and_ipv6() {
        let mut headers = HeaderMap::new();
        say_what_the_gateway_saw(&mut headers, connection("192.0.2.7:50123", false));
        assert_eq!(headers[header::FORWARDED], "for=192.0.2.7;proto=http");
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");

        let mut headers = HeaderMap::new();
        say_what_the_gateway_saw(&mut headers, connection("[2001:db8::7]:443", true));
        assert_eq!(
            headers[header::FORWARDED],
            "for=\"[2001:db8::7]\";proto=https"
        );
        assert_eq!(headers[X_FORWARDED_FOR], "2001:db8::7");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
    }
}
