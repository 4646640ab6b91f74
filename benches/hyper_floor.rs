//! The floor of the proxy benchmark: the least a hyper-based proxy does for the benchmark's job,
//! so that `benches/proxy.py` can show what hyper itself costs next to nginx, in the same run.
//!
//! It checks the client key (the whole `Authorization` value, as nginx's `map` does), swaps it for
//! the upstream key and forwards over HTTP/1.1 keep-alive, one thread per worker, each with its
//! own listener (`SO_REUSEPORT`), current-thread runtime and pool of upstream connections. No
//! routing, validation, limits, metering, timeouts or TLS: whatever the gateway costs above this
//! is the gateway's own work; what this costs above nginx is hyper's and tokio's.
//!
//! ```sh
//! cargo build --release --example hyper_floor
//! target/release/examples/hyper_floor LISTEN UPSTREAM CLIENT_KEY UPSTREAM_KEY THREADS
//! ```

// A benchmark tool: it stops with a message on a bad command line or a failed bind (the
// network's failures are 502s, as in the gateway).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// What every connection of a thread shares.
struct Thread {
    upstream: SocketAddr,
    client_key: HeaderValue,
    upstream_key: HeaderValue,
    /// Open upstream connections, idle or busy; a ready one is reused.
    pool: RefCell<Vec<SendRequest<Incoming>>>,
}

impl Thread {
    async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        if req.headers().get(header::AUTHORIZATION) != Some(&self.client_key) {
            return answer(StatusCode::UNAUTHORIZED, r#"{"error":"Unauthorized."}"#);
        }
        req.headers_mut()
            .insert(header::AUTHORIZATION, self.upstream_key.clone());
        let mut sender = match self.checkout() {
            Some(sender) => sender,
            None => match self.connect().await {
                Ok(sender) => sender,
                Err(_) => return answer(StatusCode::BAD_GATEWAY, r#"{"error":"Bad gateway."}"#),
            },
        };
        match sender.send_request(req).await {
            Ok(response) => {
                self.pool.borrow_mut().push(sender);
                response.map(BodyExt::boxed_unsync)
            }
            Err(_) => answer(StatusCode::BAD_GATEWAY, r#"{"error":"Bad gateway."}"#),
        }
    }

    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut pool = self.pool.borrow_mut();
        pool.retain(|sender| !sender.is_closed());
        let at = pool.iter().rposition(SendRequest::is_ready)?;
        Some(pool.swap_remove(at))
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error>> {
        let stream = TcpStream::connect(self.upstream).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(connection);
        Ok(sender)
    }
}

fn answer(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn serve(listen: SocketAddr, thread: Thread) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let thread = Rc::new(thread);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let thread = Rc::clone(&thread);
            tokio::task::spawn_local(async move {
                let service = hyper::service::service_fn(move |req| {
                    let thread = Rc::clone(&thread);
                    async move { Ok::<_, Infallible>(thread.forward(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, client_key, upstream_key, threads] = &args[..] else {
        eprintln!("usage: hyper_floor LISTEN UPSTREAM CLIENT_KEY UPSTREAM_KEY THREADS");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN: an address");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM: an address");
    let threads: usize = threads.parse().expect("THREADS: a number");
    let bearer = |key: &str| HeaderValue::try_from(format!("Bearer {key}")).expect("a key");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let thread = Thread {
                upstream,
                client_key: bearer(client_key),
                upstream_key: bearer(upstream_key),
                pool: RefCell::new(Vec::new()),
            };
            std::thread::spawn(move || serve(listen, thread))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
