//! The upstream connections of one serving thread, kept open and reused: one HTTP/2 connection
//! when the upstream offers h2 by ALPN (it carries every request at once), else HTTP/1.1
//! keep-alive connections, one request at a time each, as many as there are requests in flight.
//!
//! hyper-util's pooled client did this before, and cost about 11k instructions per request more
//! than hyper's own connections (callgrind, a minimal proxy either way; +2.5 µs of CPU per
//! request under load). It is made to be shared by threads and hosts: a key hashed per checkout,
//! a connect future built and raced against every checkout, a task spawned per HTTP/1.1 answer
//! to hand its connection back. A serving thread has one upstream and its own pool, so a plain
//! list under an uncontended mutex does the same job.
//!
//! What is kept from it: a request that a reused connection closed before sending is sent again
//! on another one (the upstream may close an idle connection just as it is picked); a connection
//! is reused only once it is ready (its previous answer has ended); connections idle for
//! [`IDLE_TIMEOUT`] are closed when next looked at; TCP_NODELAY; `connect_timeout`, each of the
//! host's addresses having its share for the TCP connect; HTTP/1.1 answers' heads bounded by
//! [`super::MAX_RESPONSE_HEAD`]. Not kept: racing an IPv6 address against an IPv4 one (happy
//! eyeballs); the addresses are tried in turn. Added: `connect_timeout` also bounds the TLS and
//! HTTP/2 handshakes, as the configuration says (an upstream that accepts and then says nothing
//! was bounded only by `upstream.timeout`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::MAX_RESPONSE_HEAD;
use crate::body::{Body, BoxError};

/// A connection left unused this long is closed rather than reused (the upstream may have
/// dropped it meanwhile; hyper-util's pool used the same 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One serving thread's connections to the upstream.
pub(super) struct Pool {
    connector: Connector,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The HTTP/2 connection, if the upstream speaks h2; it takes every request.
    http2: Option<http2::SendRequest<Body>>,
    /// Open HTTP/1.1 connections, each idle or still carrying an answer; the most recently used
    /// last, so that a steady load keeps reusing the same few.
    http1: Vec<Http1Connection>,
}

struct Http1Connection {
    sender: http1::SendRequest<Body>,
    /// When it last took a request, for [`IDLE_TIMEOUT`].
    used_at: Instant,
}

/// A connection to send one request on.
enum Connection {
    Http2(http2::SendRequest<Body>),
    Http1(Http1Connection),
}

/// Why a request got no answer from the upstream.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made (DNS, TCP, `connect_timeout`, TLS, handshake).
    Connect(BoxError),
    /// The connection failed while the request was sent or its answer read, or the answer was
    /// broken. Its source chain holds the client body's own error when that was the cause.
    Http(hyper::Error),
}

impl Pool {
    pub(super) fn new(connector: Connector) -> Self {
        Self {
            connector,
            state: Mutex::new(State::default()),
        }
    }

    /// Sends `req` (its path and query from the client) and waits for the answer's head.
    pub(super) async fn send(
        self: Arc<Self>,
        mut req: Request<Body>,
        path_and_query: PathAndQuery,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                None => (self.connector.connect().await?, false),
            };
            let unsent = match connection {
                Connection::Http2(mut sender) => {
                    // HTTP/2 names the target in pseudo-headers: the URI stays absolute.
                    *req.uri_mut() = self.connector.absolute(path_and_query.clone());
                    *req.version_mut() = Version::HTTP_2;
                    if !reused {
                        self.state().http2 = Some(sender.clone());
                    }
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(response),
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) if reused => {
                                // Not picked again: the retry opens a new connection.
                                self.state().http2 = None;
                                unsent
                            }
                            _ => return Err(SendError::Http(failed.into_error())),
                        },
                    }
                }
                Connection::Http1(mut connection) => {
                    // Origin form (`/api/...?...`), as a client talking to the origin sends it.
                    *req.uri_mut() = Uri::from(path_and_query.clone());
                    *req.version_mut() = Version::HTTP_11;
                    match connection.sender.try_send_request(req).await {
                        Ok(response) => {
                            // Busy until its answer's body has been read; reused after that.
                            connection.used_at = Instant::now();
                            self.state().http1.push(connection);
                            return Ok(response);
                        }
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) if reused => unsent,
                            _ => return Err(SendError::Http(failed.into_error())),
                        },
                    }
                }
            };
            // A reused connection closed before the request went out: nothing reached the
            // upstream, so it is sent again, on another connection (a new one at worst).
            tracing::debug!("an upstream connection closed before the request was sent; retrying");
            req = unsent;
        }
    }

    /// A ready connection, if one is open: the HTTP/2 one, else the most recently used idle
    /// HTTP/1.1 one. Closed and long-idle connections met on the way are dropped.
    fn checkout(&self) -> Option<Connection> {
        let mut state = self.state();
        if let Some(sender) = &state.http2 {
            if !sender.is_closed() {
                return Some(Connection::Http2(sender.clone()));
            }
            state.http2 = None;
        }
        let mut now = None;
        while let Some(at) = state
            .http1
            .iter()
            .rposition(|c| c.sender.is_ready() || c.sender.is_closed())
        {
            let connection = state.http1.swap_remove(at);
            let now = *now.get_or_insert_with(Instant::now);
            if connection.sender.is_ready() && now - connection.used_at < IDLE_TIMEOUT {
                return Some(Connection::Http1(connection));
            }
            // Dropping the sender of an idle connection closes it.
        }
        None
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a list and an option, consistent after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens connections to the upstream named by `upstream.base_url`.
pub(super) struct Connector {
    scheme: Scheme,
    authority: Authority,
    /// The host to resolve (without an IPv6 address's brackets) and the port.
    host: String,
    port: u16,
    /// For `https`: the TLS client (ALPN h2 and http/1.1) and the name the certificate must have.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Connector {
    pub(super) fn new(
        scheme: Scheme,
        authority: Authority,
        mut tls: rustls::ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Self, BoxError> {
        let https = scheme == Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if https {
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        Ok(Self {
            scheme,
            authority,
            host,
            port,
            tls,
            connect_timeout,
        })
    }

    fn absolute(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        // Scheme, authority and path each valid: the parts always make a URI.
        Uri::from_parts(parts).unwrap_or_default()
    }

    /// A new connection, its protocol chosen by ALPN (plain `http` is HTTP/1.1), its task
    /// spawned on the current runtime; all of it (TCP, TLS, HTTP) within `connect_timeout`.
    async fn connect(&self) -> Result<Connection, SendError> {
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(connected) => connected,
            Err(_elapsed) => Err(SendError::Connect(
                "upstream.connect_timeout elapsed".into(),
            )),
        }
    }

    async fn open(&self) -> Result<Connection, SendError> {
        let tcp = self.connect_tcp().await.map_err(SendError::Connect)?;
        tcp.set_nodelay(true)
            .map_err(|e| SendError::Connect(e.into()))?;
        let Some((tls, name)) = &self.tls else {
            return http1_handshake(TokioIo::new(tcp)).await;
        };
        let stream = tls
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            spawn_connection(connection);
            Ok(Connection::Http2(sender))
        } else {
            http1_handshake(TokioIo::new(stream)).await
        }
    }

    /// A TCP connection to the first of the host's addresses that takes one. Each address gets
    /// an equal share of `connect_timeout`, as hyper-util's connector gave them, so that an
    /// address that drops connection attempts (an IPv6 route that goes nowhere) leaves time for
    /// the next.
    async fn connect_tcp(&self) -> Result<TcpStream, BoxError> {
        let addresses: Vec<_> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        let share = self.connect_timeout / u32::try_from(addresses.len().max(1)).unwrap_or(1);
        let mut last_error: BoxError = format!("{} resolves to no address", self.host).into();
        for address in addresses {
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(error)) => last_error = format!("{address}: {error}").into(),
                Err(_elapsed) => {
                    last_error = format!("{address}: upstream.connect_timeout elapsed").into()
                }
            }
        }
        Err(last_error)
    }
}

async fn http1_handshake<T>(io: T) -> Result<Connection, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEAD)
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    spawn_connection(connection);
    Ok(Connection::Http1(Http1Connection {
        sender,
        used_at: Instant::now(),
    }))
}

/// Runs a connection on the current runtime (the serving thread's) until it closes.
fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    /// An HTTP/1.1 server on 127.0.0.1 that answers every request with a keep-alive 200, and
    /// counts the connections it accepted.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(crate::body::full("ok")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    /// A pool for `scheme://{authority}` that trusts no certificate (none is ever shown here).
    fn pool_with(scheme: Scheme, authority: &str, connect_timeout: Duration) -> Arc<Pool> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let authority: Authority = authority.parse().unwrap();
        let connector = Connector::new(scheme, authority, tls, connect_timeout).unwrap();
        Arc::new(Pool::new(connector))
    }

    /// A pool for `http://{authority}`.
    fn pool_for(authority: &str) -> Arc<Pool> {
        pool_with(Scheme::HTTP, authority, Duration::from_secs(5))
    }

    fn pool(addr: SocketAddr) -> Arc<Pool> {
        pool_for(&addr.to_string())
    }

    /// One request, its answer read to the end, then a turn for the connection's task (as the
    /// time a client takes to send its next request gives it).
    async fn call(pool: &Arc<Pool>) {
        let req = Request::get("/")
            .header(http::header::HOST, "upstream")
            .body(crate::body::empty())
            .unwrap();
        let response = Arc::clone(pool)
            .send(req, PathAndQuery::from_static("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_reused_until_it_has_been_idle_for_the_idle_timeout() {
        let (addr, accepted) = upstream().await;
        let pool = pool(addr);
        for _ in 0..3 {
            call(&pool).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        call(&pool).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        tokio::time::advance(IDLE_TIMEOUT).await;
        call(&pool).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "idle too long: not reused"
        );
        assert_eq!(pool.state().http1.len(), 1, "the idle one was closed");
    }

    #[tokio::test]
    async fn concurrent_requests_get_a_connection_each_and_reuse_them_after() {
        let (addr, accepted) = upstream().await;
        let pool = pool(addr);
        let calls: Vec<_> = (0..4).map(|_| call(&pool)).collect();
        futures_util::future::join_all(calls).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for _ in 0..8 {
            call(&pool).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            4,
            "no new connection once idle"
        );
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_and_its_addresses_tried_in_turn() {
        // `localhost` may resolve to ::1 before 127.0.0.1; only the latter listens here.
        let (addr, accepted) = upstream().await;
        call(&pool_for(&format!("localhost:{}", addr.port()))).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_the_upstream_never_answers_fails_at_the_connect_timeout() {
        // Accepts, then says nothing: the TCP connect succeeds, the TLS handshake never ends.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let timeout = Duration::from_secs(5);
        let pool = pool_with(Scheme::HTTPS, &addr.to_string(), timeout);
        let started = Instant::now();
        let req = Request::get("/").body(crate::body::empty()).unwrap();
        let sent = pool.send(req, PathAndQuery::from_static("/"));
        // Bounded here too, so that a regression fails rather than hangs.
        let sent = tokio::time::timeout(timeout * 2, sent).await.unwrap();
        assert!(matches!(sent, Err(SendError::Connect(_))), "{sent:?}");
        assert_eq!(started.elapsed(), timeout);
        held.abort();
    }

    #[tokio::test]
    async fn a_connection_failure_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let req = Request::get("/").body(crate::body::empty()).unwrap();
        let sent = pool(addr).send(req, PathAndQuery::from_static("/")).await;
        assert!(matches!(sent, Err(SendError::Connect(_))), "{sent:?}");
    }
}
