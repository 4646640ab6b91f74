//! The one fake upstream of the integration tests, on 127.0.0.1:0. It records exactly what it
//! received (method, target, headers, body, connection) and answers in one of two modes:
//!
//! - **HTTP** ([`MockUpstream::start`], [`MockUpstream::start_tls`]): hyper serves HTTP/1.1 and
//!   h2, and the test's handler turns each request into a [`Reply`];
//! - **raw** ([`MockUpstream::raw`]): the mock reads each HTTP/1.1 request itself and the test's
//!   script turns it into [`Step`]s on the socket, for what hyper would never send: garbage,
//!   oversized heads, half a body, a stall, a reset. It also notes how each answer's write ended
//!   ([`AnswerEnd`]), to see the gateway close an upstream connection mid-answer.
//!
//! Dropping the mock (or [`MockUpstream::stop`]) closes its listener and every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::bodies::{full_body, GeneratedBody, Pattern, TestBody};
use super::sync::Gate;
use super::tls::TestCa;

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
    /// The request's place in arrival order (1, 2, ...), over all connections.
    pub number: usize,
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

// ---------------------------------------------------------------------------------------------
// HTTP mode: replies
// ---------------------------------------------------------------------------------------------

/// How the mock answers one request in HTTP mode.
pub enum Reply {
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// A body produced as hyper polls it, with no declared length (HTTP/1.1 sends it chunked).
    Streamed {
        status: StatusCode,
        headers: HeaderMap,
        body: TestBody,
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
    /// A 200 whose body is `len` generated bytes of `x`, in 64 KiB chunks.
    pub fn stream(len: u64) -> Self {
        Self::streamed(GeneratedBody::new(len, 64 * 1024, Pattern::Constant).boxed_unsync())
    }
    /// A 200 whose body is `body`, streamed as it is polled.
    pub fn streamed(body: TestBody) -> Self {
        Self::Streamed {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        match &mut self {
            Self::Full { headers, .. } | Self::Streamed { headers, .. } => {
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

// ---------------------------------------------------------------------------------------------
// Raw mode: steps
// ---------------------------------------------------------------------------------------------

/// One thing the mock does on the socket after reading a request in raw mode.
pub enum Step {
    /// Write these bytes.
    Send(Bytes),
    /// Wait for the test to open the gate.
    Wait(Gate),
    /// Wait this long (pacing a slow body, not synchronizing).
    Pause(Duration),
    /// Close the connection with a TCP reset.
    Reset,
    /// Close the connection (FIN).
    Close,
    /// Keep the connection open and say nothing more, ever.
    Hang,
}

impl Step {
    pub fn send(bytes: impl Into<Bytes>) -> Self {
        Self::Send(bytes.into())
    }
}

/// A response head for raw mode: `status` line (`"200 OK"`) and `headers`, then the blank line.
pub fn raw_head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One HTTP/1.1 chunk of `data`.
pub fn raw_chunk(data: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// [`Reply::fixture`] as raw bytes: a whole 200 with a `Content-Length`.
pub fn raw_fixture() -> Vec<u8> {
    let length = FIXTURE.len().to_string();
    let mut headers = vec![
        ("content-type", "application/json"),
        ("content-length", length.as_str()),
    ];
    headers.extend(FIXTURE_HEADERS);
    let mut bytes = raw_head("200 OK", &headers);
    bytes.extend_from_slice(FIXTURE.as_bytes());
    bytes
}

/// How the write of a raw-mode answer ended, as the mock saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerEnd {
    /// Every byte of every [`Step::Send`] was taken.
    Written,
    /// The peer closed the connection under it after this many bytes of the answer.
    Closed(u64),
}

// ---------------------------------------------------------------------------------------------
// The mock
// ---------------------------------------------------------------------------------------------

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;
type Script = Arc<dyn Fn(&Recorded) -> Vec<Step> + Send + Sync>;

#[derive(Clone)]
enum Mode {
    Http {
        handler: Handler,
        tls: Option<TlsAcceptor>,
    },
    Raw(Script),
}

#[derive(Default)]
struct MockState {
    received: Mutex<Vec<Recorded>>,
    /// The number of requests recorded so far, for waiting on arrivals.
    count: watch::Sender<usize>,
    /// Requests read so far (numbers them; a request is recorded after its handler ran).
    arrivals: AtomicUsize,
    connections: AtomicUsize,
    /// Raw mode: the path of each answered request and how its write ended, in order.
    ends: Mutex<Vec<(String, AnswerEnd)>>,
    ended: watch::Sender<usize>,
}

impl MockState {
    fn record(&self, recorded: Recorded) {
        let mut received = self.received.lock().expect("lock");
        received.push(recorded);
        self.count.send_replace(received.len());
    }

    fn answer_ended(&self, path: String, end: AnswerEnd) {
        self.ends.lock().expect("lock").push((path, end));
        self.ended.send_modify(|n| *n += 1);
    }
}

/// The fake upstream; see the module doc. Stops accepting, and closes its connections, when
/// dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<MockState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// HTTP mode, plain HTTP/1.1 and h2c: `handler` answers every request.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let mode = Mode::Http {
            handler: Arc::new(handler),
            tls: None,
        };
        Self::listen("127.0.0.1:0".parse().expect("addr"), mode).await
    }

    /// HTTP mode over TLS with `ca`'s leaf certificate for 127.0.0.1 / localhost (ALPN h2, then
    /// http/1.1).
    pub async fn start_tls(
        ca: &TestCa,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let mode = Mode::Http {
            handler: Arc::new(handler),
            tls: Some(TlsAcceptor::from(ca.server_config())),
        };
        Self::listen("127.0.0.1:0".parse().expect("addr"), mode).await
    }

    /// Raw mode: `script` says what to write for every request read. After the script the mock
    /// reads the next request on the same connection, unless the script closed it.
    pub async fn raw(script: impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static) -> Self {
        Self::raw_on("127.0.0.1:0".parse().expect("addr"), script).await
    }

    /// [`MockUpstream::raw`] on a given address: an upstream that comes back where it was.
    pub async fn raw_on(
        addr: SocketAddr,
        script: impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        Self::listen(addr, Mode::Raw(Arc::new(script))).await
    }

    async fn listen(addr: SocketAddr, mode: Mode) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the mock upstream");
        let addr = listener.local_addr().expect("mock addr");
        let tls = matches!(mode, Mode::Http { tls: Some(_), .. });
        let state = Arc::new(MockState::default());
        let (stop, mut stopped) = watch::channel(false);
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let conn = accept_state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        let (state, mode) = (accept_state.clone(), mode.clone());
                        connections.spawn(async move {
                            match mode {
                                Mode::Http { handler, tls } => {
                                    serve_http(stream, tls, handler, state, conn).await;
                                }
                                Mode::Raw(script) => serve_raw(stream, script, state, conn).await,
                            }
                        });
                        while connections.try_join_next().is_some() {}
                    }
                    _ = stopped.wait_for(|stop| *stop) => break,
                }
            }
            // Down means down: the listener and every connection are closed.
            drop(listener);
            connections.shutdown().await;
        });
        Self {
            addr,
            tls,
            state,
            stop,
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

    /// Raw mode: how the answers to the first `n` requests whose path starts with `prefix`
    /// ended, in order, once they have.
    pub async fn answer_ends(&self, prefix: &str, n: usize) -> Vec<AnswerEnd> {
        let ends = || -> Vec<AnswerEnd> {
            let ends = self.state.ends.lock().expect("lock");
            ends.iter()
                .filter(|(path, _)| path.starts_with(prefix))
                .map(|(_, end)| *end)
                .collect()
        };
        let mut rx = self.state.ended.subscribe();
        let _ = rx.wait_for(|_| ends().len() >= n).await;
        ends()
    }

    /// Closes the listener and every connection, and returns once they are closed.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        (&mut self.task).await.expect("the mock's accept task");
    }
}

/// A local `http://` address nothing listens on.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Serving HTTP mode
// ---------------------------------------------------------------------------------------------

async fn serve_http(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    state: Arc<MockState>,
    conn: usize,
) {
    let service = hyper::service::service_fn(move |req| {
        let (handler, state) = (handler.clone(), state.clone());
        async move { answer(handler, state, conn, req).await }
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

async fn answer(
    handler: Handler,
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
        number: state.arrivals.fetch_add(1, Ordering::SeqCst) + 1,
    };
    let mut reply = handler(&recorded);
    state.record(recorded);
    if !complete {
        return Err(MockClosed("request body broken"));
    }
    loop {
        let (status, headers, body) = match reply {
            Reply::Gated { gate, then } => {
                gate.wait().await;
                reply = *then;
                continue;
            }
            Reply::Close => return Err(MockClosed("closing without an answer")),
            Reply::Full {
                status,
                headers,
                body,
            } => (status, headers, full_body(body)),
            Reply::Streamed {
                status,
                headers,
                body,
            } => (status, headers, body),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
}

// ---------------------------------------------------------------------------------------------
// Serving raw mode
// ---------------------------------------------------------------------------------------------

async fn serve_raw(mut stream: TcpStream, script: Script, state: Arc<MockState>, conn: usize) {
    let _ = stream.set_nodelay(true);
    let mut buffered = BytesMut::new();
    while let Some(recorded) = read_request(&mut stream, &mut buffered, conn, &state).await {
        let steps = script(&recorded);
        let path = recorded.uri.path().to_owned();
        state.record(recorded);
        let mut written = 0u64;
        for step in steps {
            match step {
                Step::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        state.answer_ended(path, AnswerEnd::Closed(written));
                        return;
                    }
                    written += bytes.len() as u64;
                }
                Step::Wait(gate) => gate.wait().await,
                Step::Pause(pause) => tokio::time::sleep(pause).await,
                Step::Reset => {
                    state.answer_ended(path, AnswerEnd::Written);
                    // SO_LINGER 0: the close sends RST instead of FIN (and cannot block).
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Close => {
                    state.answer_ended(path, AnswerEnd::Written);
                    return;
                }
                Step::Hang => std::future::pending::<()>().await,
            }
        }
        state.answer_ended(path, AnswerEnd::Written);
    }
}

/// Reads more of `stream` into `buffered`; false at the end of the stream.
async fn fill(stream: &mut TcpStream, buffered: &mut BytesMut) -> bool {
    matches!(stream.read_buf(buffered).await, Ok(n) if n > 0)
}

/// Reads one HTTP/1.1 request (its head, then a `Content-Length` or chunked body); `None` at the
/// end of the stream or if what arrives is not a request.
async fn read_request(
    stream: &mut TcpStream,
    buffered: &mut BytesMut,
    conn: usize,
    state: &MockState,
) -> Option<Recorded> {
    let (method, uri, version, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 256];
        let mut request = httparse::Request::new(&mut slots);
        match request.parse(buffered) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = Method::from_bytes(request.method?.as_bytes()).ok()?;
                let uri: http::Uri = request.path?.parse().ok()?;
                let version = match request.version? {
                    0 => Version::HTTP_10,
                    _ => Version::HTTP_11,
                };
                let mut headers = HeaderMap::new();
                for header in request.headers.iter() {
                    headers.append(
                        HeaderName::from_bytes(header.name.as_bytes()).ok()?,
                        HeaderValue::from_bytes(header.value).ok()?,
                    );
                }
                break (method, uri, version, headers, head_len);
            }
            Ok(httparse::Status::Partial) => {
                if !fill(stream, buffered).await {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    buffered.advance(head_len);
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        read_chunked(stream, buffered).await?
    } else {
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .unwrap_or(0);
        while buffered.len() < length {
            if !fill(stream, buffered).await {
                return None;
            }
        }
        buffered.split_to(length).freeze()
    };
    Some(Recorded {
        method,
        uri,
        version,
        headers,
        body,
        body_complete: true,
        conn,
        number: state.arrivals.fetch_add(1, Ordering::SeqCst) + 1,
    })
}

/// Reads a chunked body (without trailers) off the front of `buffered` and `stream`.
async fn read_chunked(stream: &mut TcpStream, buffered: &mut BytesMut) -> Option<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let (size_len, size) = loop {
            match httparse::parse_chunk_size(buffered) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) => {
                    if !fill(stream, buffered).await {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        };
        let size = usize::try_from(size).ok()?;
        // The chunk's data and its CRLF (after the last chunk: the final CRLF).
        while buffered.len() < size_len + size + 2 {
            if !fill(stream, buffered).await {
                return None;
            }
        }
        buffered.advance(size_len);
        body.extend_from_slice(&buffered[..size]);
        buffered.advance(size + 2);
        if size == 0 {
            return Some(body.freeze());
        }
    }
}
