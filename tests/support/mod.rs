//! The integration tests' harness: a mock upstream that records exactly what it received, a
//! gateway started in-process on port 0 from a `Config` built in Rust, small HTTP clients (HTTP/1.1,
//! h2c, HTTPS with either), a raw TCP client for requests a `Uri` would refuse, and a throwaway CA.
//!
//! Nothing here sleeps to synchronize: a request held upstream is observed with
//! [`MockUpstream::wait_for_count`], and released with a [`Gate`].

// Each test binary uses a different part of the harness; a harness may panic on any failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod process;
pub mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
pub use ofapi_gateway::config::ForwardedHeaders;
use ofapi_gateway::config::{
    AdminConfig, BudgetPeriod, Client, ClientId, ClientRegistry, Config, CreditsConfig, KeyHash,
    LedgerConfig, PatternSegment, RateLimitConfig, RoutePattern, Secret, ServerConfig, TlsSettings,
    UpstreamConfig,
};
use ofapi_gateway::server::Gateway;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the test clients send and every response the mock sends.
pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------------------------
// Fixed names and keys
// ---------------------------------------------------------------------------------------------

/// The shared upstream key the gateway holds; must never reach a client or a log.
pub const UPSTREAM_KEY: &str = "upstream-SECRET-key-0123456789";
/// A client with access to all of `/api/`.
pub const ALPHA_KEY: &str = "ofgw_test_alpha_0123456789abcdefghijklmnopqrstuvwxyz";
/// A client whose entry is `disabled = true`.
pub const DISABLED_KEY: &str = "ofgw_test_disabled_0123456789abcdefghijklmnopqrstuvw";
/// A client with `allow` = tracking-link update + `GET /api/fansly/**` and `accounts` = [ACCOUNT].
pub const SCOPED_KEY: &str = "ofgw_test_scoped_0123456789abcdefghijklmnopqrstuvwxy";
/// A client with `accounts` = [ACCOUNT] and no `allow` (all routes).
pub const ACCOUNTS_KEY: &str = "ofgw_test_accounts_0123456789abcdefghijklmnopqrstuvw";
/// A well-formed key no client has.
pub const UNKNOWN_KEY: &str = "ofgw_test_unknown_0123456789abcdefghijklmnopqrstuvwx";

pub const ACCOUNT: &str = "fansly_acct_123";
pub const OTHER_ACCOUNT: &str = "fansly_acct_999";
pub const TRACKING_LINK_ID: &str = "845759434926862336";

/// `/api/fansly/{account}/tracking-links/{id}`, the validated route.
pub fn tracking_link_path(account: &str) -> String {
    format!("/api/fansly/{account}/tracking-links/{TRACKING_LINK_ID}")
}

/// The upstream's 200 answer to a tracking-link update (SPEC §2 fixture).
pub const FIXTURE: &str = r#"{"data":{"id":"100000000000000003","accountId":"800000000000000001","internalId":"1002","type":1000,"status":1,"label":"Twitter bio (updated)","description":"Updated description.","metadata":"{}","createdAt":1780512430000,"clicks":null,"claims":null,"follows":null,"subscriptions":null,"totalNet":null,"totalGross":null},"_meta":{"_credits":{"used":1,"balance":10055796,"note":"Always"},"_cache":{"is_cached":false,"note":"Cache disabled for this endpoint"},"_rate_limits":{"limit_minute":5000,"limit_day":null,"remaining_minute":4999,"remaining_day":null,"notice":"We have decided to remove our daily rate limits. Please remove any references to these in your integrations."}}}"#;

/// The `x-ofapi-*` / `x-rate-limit-*` headers that go with [`FIXTURE`].
pub const FIXTURE_HEADERS: [(&str, &str); 5] = [
    ("x-ofapi-credits-used", "1"),
    ("x-ofapi-credits-balance", "10055796"),
    ("x-ofapi-is-cached", "false"),
    ("x-rate-limit-limit-minute", "5000"),
    ("x-rate-limit-remaining-minute", "4999"),
];

/// Runs `fut`, failing the test if it takes longer than `secs`.
pub async fn bounded<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its time bound of {secs}s"))
}

// ---------------------------------------------------------------------------------------------
// Gate
// ---------------------------------------------------------------------------------------------

/// A one-way gate the test opens: whoever waits on it is held until then.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------------

/// What the mock received, exactly.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// As on the wire: path and query (origin form for HTTP/1.1, with authority for h2).
    pub uri: http::Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// Every body byte that arrived (all of it if `body_complete`).
    pub body: Bytes,
    /// False if the body ended in an error (the sender gave up before the end).
    pub body_complete: bool,
    /// The number of the upstream connection it came on (1, 2, ...), to assert pooling.
    pub conn: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    }
    /// Every header name, value and the body, as one lossy string: for "appears nowhere" checks.
    pub fn everything(&self) -> String {
        let mut all = format!("{} {}\n", self.method, self.uri);
        for (name, value) in &self.headers {
            all.push_str(name.as_str());
            all.push_str(": ");
            all.push_str(&String::from_utf8_lossy(value.as_bytes()));
            all.push('\n');
        }
        all.push_str(&String::from_utf8_lossy(&self.body));
        all
    }
}

/// How the mock answers one request.
pub enum Reply {
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// `len` bytes of `x`, in 64 KiB chunks, generated as they are sent (chunked encoding).
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        len: u64,
    },
    /// Answers `then` once the gate opens.
    Gated { gate: Gate, then: Box<Reply> },
    /// Closes the connection without answering.
    Close,
}

impl Reply {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self::Full {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }
    /// The documented 200 of a tracking-link update, with its `x-ofapi-*` headers.
    pub fn fixture() -> Self {
        let mut reply = Self::json(200, FIXTURE);
        for (name, value) in FIXTURE_HEADERS {
            reply = reply.header(name, value);
        }
        reply
    }
    /// A 200 whose body is `len` generated bytes.
    pub fn stream(len: u64) -> Self {
        Self::Stream {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            len,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        match &mut self {
            Self::Full { headers, .. } | Self::Stream { headers, .. } => {
                headers.append(name, value);
            }
            Self::Gated { then, .. } => {
                let inner = std::mem::replace(then.as_mut(), Reply::Close);
                **then = inner.header(name.as_str(), value.to_str().expect("ascii"));
            }
            Self::Close => {}
        }
        self
    }
    pub fn body(mut self, bytes: impl Into<Bytes>) -> Self {
        if let Self::Full { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }
    /// Holds this reply until `gate` opens.
    pub fn gated(self, gate: &Gate) -> Self {
        Self::Gated {
            gate: gate.clone(),
            then: Box::new(self),
        }
    }
}

type Handler = Box<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct MockState {
    received: Mutex<Vec<Recorded>>,
    /// The number of requests recorded so far, for waiting on arrivals.
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    handler: Handler,
}

/// An upstream on 127.0.0.1:0 (plain, or TLS with ALPN h2 + http/1.1) that records every request
/// and answers with the test's handler. Stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(None, Box::new(handler)).await
    }

    /// The mock over TLS with `ca`'s leaf certificate for 127.0.0.1 / localhost.
    pub async fn start_tls(
        ca: &TestCa,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(
            Some(TlsAcceptor::from(ca.server_config())),
            Box::new(handler),
        )
        .await
    }

    async fn start_with(tls: Option<TlsAcceptor>, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(MockState {
            received: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            handler,
        });
        let is_tls = tls.is_some();
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = accept_state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let state = accept_state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { handle(state, conn, req).await }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:port` (or `https://`), for `upstream.base_url`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.state.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().expect("lock").len()
    }

    /// How many connections the mock accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Returns once at least `n` requests have been recorded (their bodies read to the end).
    pub async fn wait_for_count(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }
}

/// The mock's reason to drop a connection without answering (hyper then closes it).
#[derive(Debug)]
struct MockClosed(&'static str);

impl std::fmt::Display for MockClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for MockClosed {}

async fn handle(
    state: Arc<MockState>,
    conn: usize,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, MockClosed> {
    let (parts, mut body) = req.into_parts();
    let mut bytes = BytesMut::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let recorded = Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: bytes.freeze(),
        body_complete: complete,
        conn,
    };
    let reply = (state.handler)(&recorded);
    {
        let mut received = state.received.lock().expect("lock");
        received.push(recorded);
        state.count.send_replace(received.len());
    }
    if !complete {
        return Err(MockClosed("request body broken"));
    }
    let mut reply = reply;
    loop {
        match reply {
            Reply::Gated { gate, then } => {
                gate.wait().await;
                reply = *then;
            }
            Reply::Close => return Err(MockClosed("closing without an answer")),
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut response = Response::new(full_body(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                return Ok(response);
            }
            Reply::Stream {
                status,
                headers,
                len,
            } => {
                let mut response = Response::new(
                    GeneratedBody::new(len, 64 * 1024, Pattern::Constant).boxed_unsync(),
                );
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                return Ok(response);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// What a [`GeneratedBody`] is made of.
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// `x` bytes from one static buffer: no allocation per chunk.
    Constant,
    /// A position-dependent byte pattern, so that a reordered or corrupted byte changes the hash.
    Counting,
}

static CONSTANT_CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

fn pattern_byte(pos: u64) -> u8 {
    (pos.wrapping_mul(31) ^ (pos >> 11)) as u8
}

/// `len` bytes in chunks of `chunk`, generated as they are polled, with no declared length (so
/// HTTP/1.1 sends it chunked).
pub struct GeneratedBody {
    remaining: u64,
    sent: u64,
    chunk: usize,
    pattern: Pattern,
}

impl GeneratedBody {
    pub fn new(len: u64, chunk: usize, pattern: Pattern) -> Self {
        assert!(chunk > 0 && chunk <= CONSTANT_CHUNK.len());
        Self {
            remaining: len,
            sent: 0,
            chunk,
            pattern,
        }
    }
}

impl http_body::Body for GeneratedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk as u64) as usize;
        let data = match self.pattern {
            Pattern::Constant => Bytes::from_static(&CONSTANT_CHUNK[..n]),
            Pattern::Counting => {
                let start = self.sent;
                (0..n as u64).map(|i| pattern_byte(start + i)).collect()
            }
        };
        self.remaining -= n as u64;
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// A chunked request body of `len` counting-pattern bytes.
pub fn counting_body(len: u64, chunk: usize) -> TestBody {
    GeneratedBody::new(len, chunk, Pattern::Counting).boxed_unsync()
}

/// The hex SHA-256 of `len` counting-pattern bytes, computed without holding them.
pub fn counting_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut pos = 0;
    while pos < len {
        buf.clear();
        let n = (len - pos).min(64 * 1024);
        buf.extend((0..n).map(|i| pattern_byte(pos + i)));
        hasher.update(&buf);
        pos += n;
    }
    hex::encode(hasher.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// The settings tests change; everything else is fixed by [`build_config`].
pub struct Options {
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    /// `server.header_read_timeout`: also how long a connection may sit idle.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `server.send_timeout`: how long a response may wait on a client that takes no bytes.
    pub send_timeout: Duration,
    /// The upstream's test CA (`upstream.ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// TLS termination on the client listener.
    pub server_tls: Option<TlsSettings>,
    pub forwarded_headers: ForwardedHeaders,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(20),
            upstream_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(2),
            max_concurrent_requests: 64,
            shutdown_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            send_timeout: Duration::from_secs(60),
            extra_roots: Vec::new(),
            server_tls: None,
            forwarded_headers: ForwardedHeaders::Strip,
        }
    }
}

fn client(
    name: &str,
    key: &str,
    disabled: bool,
    allow: Option<Vec<RoutePattern>>,
    accounts: Option<Vec<String>>,
) -> Arc<Client> {
    Arc::new(Client {
        id: ClientId(name.into()),
        key_hashes: vec![KeyHash::of_key(key)],
        disabled,
        requests_per_minute: None,
        credit_budget: None,
        budget_period: BudgetPeriod::Month,
        allow,
        accounts,
    })
}

/// `METHOD /a/*/b/**` as a [`RoutePattern`].
pub fn pattern(method: Option<Method>, path: &str) -> RoutePattern {
    RoutePattern {
        method,
        segments: path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                "*" => PatternSegment::AnyOne,
                "**" => PatternSegment::AnyMany,
                literal => PatternSegment::Literal(literal.to_owned()),
            })
            .collect(),
    }
}

/// The test clients: `alpha` (everything), `disabled`, `scoped` (allow + accounts), `accounts`.
pub fn test_clients() -> ClientRegistry {
    ClientRegistry::new(vec![
        client("alpha", ALPHA_KEY, false, None, None),
        client("disabled", DISABLED_KEY, true, None, None),
        client(
            "scoped",
            SCOPED_KEY,
            false,
            Some(vec![
                pattern(Some(Method::PUT), "/api/fansly/*/tracking-links/*"),
                pattern(Some(Method::GET), "/api/fansly/**"),
            ]),
            Some(vec![ACCOUNT.to_owned()]),
        ),
        client(
            "accounts",
            ACCOUNTS_KEY,
            false,
            None,
            Some(vec![ACCOUNT.to_owned()]),
        ),
    ])
}

/// A whole `Config`: both listeners on 127.0.0.1:0, upstream at `upstream_base_url` with
/// [`UPSTREAM_KEY`], the [`test_clients`], ledger files under `dir`.
pub fn build_config(upstream_base_url: &str, options: Options, dir: &Path) -> Config {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Config {
        source: dir.join("gateway.toml"),
        server: ServerConfig {
            listen,
            tls: options.server_tls,
            public_url: Some("http://127.0.0.1:8080".into()),
            max_body_bytes: options.max_body_bytes,
            request_timeout: options.request_timeout,
            max_concurrent_requests: options.max_concurrent_requests,
            shutdown_grace: options.shutdown_grace,
            header_read_timeout: options.header_read_timeout,
            max_connections: options.max_connections,
            send_timeout: options.send_timeout,
        },
        admin: AdminConfig {
            listen,
            token: None,
        },
        upstream: UpstreamConfig {
            base_url: upstream_base_url.parse().expect("base url"),
            api_key: Secret::new(UPSTREAM_KEY.to_owned()),
            api_key_source: "env ONLYFANSAPI_API_KEY".into(),
            extra_roots: options.extra_roots,
            connect_timeout: options.connect_timeout,
            timeout: options.upstream_timeout,
            forwarded_headers: options.forwarded_headers,
        },
        rate_limit: RateLimitConfig {
            requests_per_minute: NonZeroU32::new(100_000).expect("nonzero"),
            headroom: 1.0,
            max_wait: Duration::from_secs(2),
        },
        ledger: LedgerConfig {
            path: dir.join("ledger.sqlite"),
            retention: Duration::from_secs(90 * 24 * 3600),
        },
        credits: CreditsConfig {
            low_balance_warning: 0,
        },
        sandbox: None,
        clients: test_clients(),
    }
}

/// A gateway running in this process.
pub struct TestGateway {
    pub gateway: Gateway,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    scheme: &'static str,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(upstream_base_url: &str, options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if options.server_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let config = build_config(upstream_base_url, options, dir.path());
        let gateway = Gateway::start(config).await.expect("gateway starts");
        Self {
            client_addr: gateway.client_addr,
            admin_addr: gateway.admin_addr,
            gateway,
            scheme,
            _dir: dir,
        }
    }

    /// The client listener's URL for `path` (which may carry a query).
    pub fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" {
            format!("localhost:{}", self.client_addr.port())
        } else {
            self.client_addr.to_string()
        };
        format!("{}://{host}{path}", self.scheme)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
    }
}

/// A local address nothing listens on.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
    /// Headers and body as one lossy string, for "appears nowhere" checks.
    pub fn everything(&self) -> String {
        let mut all = String::new();
        for (name, value) in &self.headers {
            all.push_str(name.as_str());
            all.push_str(": ");
            all.push_str(&String::from_utf8_lossy(value.as_bytes()));
            all.push('\n');
        }
        all.push_str(&self.text());
        all
    }
}

/// Asserts a SPEC §5 gateway error: status, JSON body with `error`, `code` and a `request_id`
/// equal to the `x-request-id` header. Returns the body.
#[track_caller]
pub fn assert_gateway_error(resp: &Resp, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "unexpected status; body: {}",
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let body = resp.json();
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error sentence missing: {body}"
    );
    let id = resp
        .header("x-request-id")
        .expect("x-request-id on every response");
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id, "body: {body}");
    body
}

/// `Authorization: Bearer <key>`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A request builder for `method url`.
pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(url)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// A pooled hyper-util client; plain HTTP/1.1, h2c (prior knowledge), or HTTPS trusting a CA.
#[derive(Clone)]
pub struct HttpClient {
    client: LegacyClient<HttpsConnector<HttpConnector>, TestBody>,
}

fn client_tls(roots: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth()
}

impl HttpClient {
    pub fn http1() -> Self {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(&[]))
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: LegacyClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn h2c() -> Self {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(&[]))
            .https_or_http()
            .enable_http2()
            .build();
        Self {
            client: LegacyClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// HTTPS only, trusting `ca`, offering only `alpn`.
    pub fn https(ca: &TestCa, alpn: Alpn) -> Self {
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(std::slice::from_ref(&ca.ca_der)))
            .https_only();
        let connector = match alpn {
            Alpn::Http1 => builder.enable_http1().build(),
            Alpn::H2 => builder.enable_http2().build(),
        };
        Self {
            client: LegacyClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `req` and returns the response with its body unread.
    pub async fn send_streaming(
        &self,
        req: Request<TestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        Ok(self.client.request(req).await?)
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> Result<Resp, BoxError> {
        let response = self.client.request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`, with `Authorization: Bearer key` when given.
    pub async fn get(&self, url: &str, key: Option<&str>) -> Resp {
        let mut builder = request("GET", url);
        if let Some(key) = key {
            builder = builder.header("authorization", bearer(key));
        }
        self.send(builder.body(empty_body()).expect("request"))
            .await
            .expect("GET")
    }

    /// `method url` with the alpha client's key and `body` (JSON content type when non-empty).
    pub async fn call(&self, method: &str, url: &str, key: &str, body: &str) -> Resp {
        let mut builder = request(method, url).header("authorization", bearer(key));
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        self.send(builder.body(full_body(body.to_owned())).expect("request"))
            .await
            .expect("request")
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes `request` as is (it should say `Connection: close`) and reads the response until the
/// server closes the connection.
///
/// The request is written concurrently with reading, and a failed write is ignored, so that a
/// server answering before it has read the whole request (413) can be observed.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut stream, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Keep the write half open (no FIN) until the response has been read.
        writer
    });
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    write.abort();
    parse_raw_response(&bytes)
}

fn parse_raw_response(bytes: &[u8]) -> RawResp {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head: {:?}",
                String::from_utf8_lossy(bytes)
            )
        });
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    RawResp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Test CA
// ---------------------------------------------------------------------------------------------

/// A throwaway CA and a leaf for 127.0.0.1 / localhost, PEMs written to a tempdir.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ofapi-gateway test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params.signed_by(&leaf_key, &*ca).expect("leaf cert");

        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        std::fs::write(&cert_path, leaf.pem()).expect("write cert");
        std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write key");
        Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            cert_der: leaf.der().clone(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            key_der: leaf_key.serialize_der(),
            dir,
            ca_path,
            cert_path,
            key_path,
        }
    }

    /// A server config with the leaf certificate, ALPN `h2` then `http/1.1`.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert_der.clone()], key)
        .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// `server.tls` for the gateway's client listener.
    pub fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            server_config: self.server_config(),
        }
    }
}
