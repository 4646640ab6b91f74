//! Clients that do not read (issue 12): a response whose client takes no bytes for
//! `server.send_timeout` is cut, on HTTP/1.1 and on an HTTP/2 stream whose window stays shut,
//! so that stalled downloads cannot hold the concurrency slots, upstream connections and
//! sockets they would otherwise hold forever. The cut call is recorded as `cut` with its
//! credits. Clients that read slowly but steadily are not cut.
//!
//! The upstream here is the mock upstream's raw mode, writing large answers as fast as the
//! gateway takes them and saying, for each, whether it was written to the end or its connection
//! was closed under it. The stalled clients are real sockets with a 4 KiB receive buffer that
//! read nothing (or HTTP/2 clients that give no window). `send_timeout` is a second or less so the file runs in
//! seconds; the slow readers are paced with sleeps (pacing, not synchronizing).

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------
// An upstream with large answers
// ---------------------------------------------------------------------------------------------

/// The credits every large answer costs, in its headers or its `_meta`.
const CREDITS: u64 = 7;

/// A raw-mode mock upstream. `GET /api/big/{kind}?bytes=N` is a JSON 200 of about N bytes whose
/// credits are in its headers (`headers`), at the start of its `_meta` (`meta-first`) or at its
/// end (`meta-last`); anything else is the small SPEC fixture. How each large answer's write
/// ended is [`big_ends`].
async fn big_upstream() -> MockUpstream {
    MockUpstream::raw(|req| {
        let Some(kind) = req.uri.path().strip_prefix("/api/big/") else {
            return vec![Step::send(raw_fixture())];
        };
        let bytes: u64 = req
            .uri
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000_000);
        big_answer(kind, bytes)
    })
    .await
}

/// How the first `n` large answers ended, once they have.
async fn big_ends(upstream: &MockUpstream, n: usize) -> Vec<AnswerEnd> {
    upstream.answer_ends("/api/big/", n).await
}

static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A JSON 200 of `filler` bytes of string plus its frame, credits as `kind` says.
fn big_answer(kind: &str, filler: u64) -> Vec<Step> {
    let meta = format!(r#""_meta":{{"_credits":{{"used":{CREDITS},"balance":5000}}}}"#);
    let (prefix, suffix, headers) = match kind {
        "meta-first" => (format!(r#"{{{meta},"data":""#), r#""}"#.to_owned(), ""),
        "meta-last" => (r#"{"data":""#.to_owned(), format!(r#"",{meta}}}"#), ""),
        _ => (
            r#"{"data":""#.to_owned(),
            r#""}"#.to_owned(),
            "x-ofapi-credits-used: 7\r\nx-ofapi-credits-balance: 5000\r\n",
        ),
    };
    let length = prefix.len() as u64 + filler + suffix.len() as u64;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{headers}\r\n"
    );
    let chunk = FILLER.len() as u64;
    let filler = std::iter::repeat_n(Bytes::from_static(&FILLER), (filler / chunk) as usize).chain(
        std::iter::once(Bytes::from_static(&FILLER[..(filler % chunk) as usize])),
    );
    std::iter::once(Bytes::from(head))
        .chain(std::iter::once(Bytes::from(prefix)))
        .chain(filler)
        .chain(std::iter::once(Bytes::from(suffix)))
        .map(Step::Send)
        .collect()
}

/// `send_timeout` for the tests that wait for a cut.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

fn options(send_timeout: Duration, max_concurrent_requests: usize) -> Options {
    Options {
        send_timeout,
        max_concurrent_requests,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects with a 4 KiB receive buffer (set before connecting, so the window is that small from
/// the start) and sends `GET path` as the alpha client with request id `id`.
async fn small_window_client(addr: SocketAddr, path: &str, id: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nX-Request-Id: {id}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Sends a small call every 20 ms until one gets its 200 (the others get 503 while the only
/// concurrency slot is held); returns when that was.
async fn when_the_slot_is_free(gw: &TestGateway) -> Instant {
    let client = HttpClient::http1();
    loop {
        let resp = client.get(&gw.url("/api/small"), Some(ALPHA_KEY)).await;
        if resp.status == 200 {
            return Instant::now();
        }
        assert_gateway_error(&resp, 503, "overloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bytes queued (unsent or unacknowledged) on the local TCP socket from `local_port` to
/// `remote_port` on 127.0.0.1, from `/proc/net/tcp`; `None` if there is no such socket.
fn send_queue(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{local_port:04X}");
    let remote = format!("0100007F:{remote_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (tx_queue, _rx_queue) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(tx_queue, 16).ok()
    })
}

/// Sends `GET path` as the alpha client with request id `id` and waits for the response head.
async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    id: &str,
) -> h2::RecvStream {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header("authorization", bearer(ALPHA_KEY))
        .header("x-request-id", id)
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).expect("send_request");
    let response = response.await.expect("response head");
    assert_eq!(response.status(), 200);
    response.into_body()
}

// ---------------------------------------------------------------------------------------------
// Cut
// ---------------------------------------------------------------------------------------------

/// A client that asks for 20 MB and reads nothing is cut `send_timeout` after it stopped taking
/// bytes (at most a quarter more): its connection is reset mid-body, its concurrency slot is free
/// again (with `max_concurrent_requests = 1`, the next call gets 200 instead of 503), the
/// upstream connection it held is closed, and its call is in the ledger as `cut`, with the
/// credits the upstream's headers gave. Meanwhile the gateway's kernel held little for it: the
/// socket's send queue stayed far below the megabytes Linux lets it grow to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_cut_after_the_send_timeout_and_frees_what_it_held() {
    bounded(30, async {
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(SEND_TIMEOUT, 1)).await;
        let mut stalled = small_window_client(gw.client_addr, "/api/big/headers", "stalled").await;
        let client_port = stalled.local_addr().unwrap().port();
        upstream.wait_for_count(1).await;
        let asked = Instant::now();

        // Until the slot is free, the gateway's send queue to the client, as the kernel says.
        let client = HttpClient::http1();
        let mut most_queued = 0;
        let freed = loop {
            if let Some(queued) = send_queue(gw.client_addr.port(), client_port) {
                most_queued = most_queued.max(queued);
            }
            let resp = client.get(&gw.url("/api/small"), Some(ALPHA_KEY)).await;
            if resp.status == 200 {
                break Instant::now();
            }
            assert_gateway_error(&resp, 503, "overloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            most_queued > 0 && most_queued < 256 * 1024,
            "the gateway's kernel queued up to {most_queued} bytes for the client"
        );
        let held = freed - asked;
        assert!(
            held >= SEND_TIMEOUT * 9 / 10 && held < 4 * SEND_TIMEOUT,
            "the slot was held for {held:?}"
        );
        // What was in its own socket buffer, and not the megabytes a kernel send buffer can
        // hold: the gateway queued little unsent, and reset the connection rather than leave
        // the kernel delivering the rest after the close.
        let got = read_to_close(&mut stalled).await.len();
        assert!(got < 1_000_000, "the client got {got} bytes after the cut");
        let ends = big_ends(&upstream, 1).await;
        assert!(
            matches!(ends[..], [AnswerEnd::Closed(sent)] if sent < 20_000_000),
            "the upstream connection was not closed mid-answer: {ends:?}"
        );

        let rows = gw.stop().await;
        let row = row_of(&rows, "stalled");
        assert_eq!(
            (row.status, row.outcome.as_str(), row.credits_used),
            (200, "cut", Some(CREDITS)),
            "{row:?}"
        );
    })
    .await
}

/// A cut call keeps its credits wherever the upstream put them: in its headers, in a `_meta`
/// already read before the cut, or in a `_meta` after the cut, which the gateway reads from the
/// rest of the answer once the client is gone (the upstream charged for the whole answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_response_keeps_its_credits_from_its_headers_or_its_meta_before_or_after_the_cut() {
    bounded(60, async {
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(SEND_TIMEOUT, 1)).await;
        let kinds = ["headers", "meta-first", "meta-last"];
        let mut sockets = Vec::new();
        for (n, kind) in kinds.iter().enumerate() {
            // 8 MB: what is left after the cut stays within what the gateway reads for `_meta`.
            let path = format!("/api/big/{kind}?bytes=8000000");
            sockets.push(small_window_client(gw.client_addr, &path, kind).await);
            upstream.wait_for_count(2 * n + 1).await;
            when_the_slot_is_free(&gw).await;
        }
        let ends = big_ends(&upstream, 3).await;
        assert!(
            matches!(
                ends[..],
                [
                    AnswerEnd::Closed(_),
                    AnswerEnd::Closed(_),
                    AnswerEnd::Written
                ]
            ),
            "only the answer whose credits were still unknown is read to its end: {ends:?}"
        );
        let rows = gw.stop().await;
        for kind in kinds {
            let row = row_of(&rows, kind);
            assert_eq!(
                (row.status, row.outcome.as_str(), row.credits_used),
                (200, "cut", Some(CREDITS)),
                "{kind}: {row:?}"
            );
        }
    })
    .await
}

/// An HTTP/2 client that gives a stream no window (`SETTINGS_INITIAL_WINDOW_SIZE` 0) gets the
/// response head but no byte of the body; `send_timeout` later its connection is closed, the
/// slot and the upstream connection are freed, and the call is recorded as `cut`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_shut_is_cut_after_the_send_timeout() {
    bounded(30, async {
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(SEND_TIMEOUT, 1)).await;
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(0);
        let (mut send, connection) = h2_connect(gw.client_addr, &builder).await;
        let _body = h2_get(&mut send, gw.client_addr, "/api/big/headers", "shut").await;
        let asked = Instant::now();

        let freed = when_the_slot_is_free(&gw).await;
        let held = freed - asked;
        assert!(
            held >= SEND_TIMEOUT * 9 / 10 && held < 4 * SEND_TIMEOUT,
            "the slot was held for {held:?}"
        );
        // The connection is gone (the h2 client sees it end).
        let _ = connection.await.unwrap();
        let ends = big_ends(&upstream, 1).await;
        assert!(matches!(ends[..], [AnswerEnd::Closed(_)]), "{ends:?}");
        let rows = gw.stop().await;
        let row = row_of(&rows, "shut");
        assert_eq!(
            (row.status, row.outcome.as_str(), row.credits_used),
            (200, "cut", Some(CREDITS)),
            "{row:?}"
        );
    })
    .await
}

/// One stalled stream is enough: while the client reads another stream of the same connection
/// steadily (so the socket keeps taking bytes), a stream whose window it never opens again is
/// still cut after `send_timeout`. hyper gives no way to reset that stream alone, so the
/// connection is closed, the stream being read with it; both calls are recorded as `cut`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_left_without_window_is_cut_while_another_on_its_connection_is_read() {
    bounded(30, async {
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(SEND_TIMEOUT, 4)).await;
        let mut builder = h2::client::Builder::new();
        // Room on the connection for the read stream while the stalled one holds its 64 KiB.
        builder.initial_connection_window_size(32 << 20);
        let (mut send, connection) = h2_connect(gw.client_addr, &builder).await;
        let _stalled = h2_get(&mut send, gw.client_addr, "/api/big/headers", "unread").await;
        let mut read = h2_get(&mut send, gw.client_addr, "/api/big/headers", "read").await;
        let asked = Instant::now();

        // About 1.6 MB/s: 20 MB would take 12 s.
        let mut got = 0usize;
        let mut got_after_timeout = 0usize;
        while let Some(Ok(data)) = read.data().await {
            got += data.len();
            if asked.elapsed() > SEND_TIMEOUT {
                got_after_timeout += data.len();
            }
            let _ = read.flow_control().release_capacity(data.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cut_after = asked.elapsed();
        assert!(
            cut_after >= SEND_TIMEOUT * 9 / 10 && cut_after < 4 * SEND_TIMEOUT,
            "cut after {cut_after:?}"
        );
        assert!(
            got < 20_000_000 && got_after_timeout > 0,
            "the read stream got {got} bytes, {got_after_timeout} after the send timeout"
        );
        let _ = connection.await.unwrap();
        let ends = big_ends(&upstream, 2).await;
        assert!(
            matches!(ends[..], [AnswerEnd::Closed(_), AnswerEnd::Closed(_)]),
            "{ends:?}"
        );
        let rows = gw.stop().await;
        for id in ["unread", "read"] {
            let row = row_of(&rows, id);
            assert_eq!(
                (row.status, row.outcome.as_str()),
                (200, "cut"),
                "{id}: {row:?}"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Not cut
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 client reading a 4 KiB socket buffer at about 40 KiB/s takes 192 KiB over several
/// send timeouts: it gets every byte, and the call is `complete`. hyper's write buffer stays
/// full, so the body waits on it for longer than `send_timeout` between frames (the upstream's
/// reads grow to 64 KiB); the socket taking bytes all along is what counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_http1_reader_is_not_cut() {
    bounded(30, async {
        let send_timeout = SEND_TIMEOUT;
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(send_timeout, 4)).await;
        let bytes = 192 * 1024;
        let path = format!("/api/big/headers?bytes={bytes}");
        let mut stream = small_window_client(gw.client_addr, &path, "steady").await;
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            got.extend_from_slice(&buf[..n]);
            // The gateway sends a JSON GET chunked (it may rewrite `next_page` links).
            if got.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
            // 40 KiB/s.
            tokio::time::sleep(Duration::from_micros(n as u64 * 25)).await;
        }
        let took = started.elapsed();
        assert!(
            got.ends_with(b"\r\n0\r\n\r\n"),
            "cut after {took:?}, with {} bytes",
            got.len()
        );
        let (response, _) = parse_response(&got, false).expect("a whole response");
        assert_eq!(response.body.len(), bytes + 11, "the whole body arrived");
        assert!(
            took > 3 * send_timeout,
            "not slow enough to mean anything: {took:?}"
        );
        let rows = gw.stop().await;
        assert_eq!(row_of(&rows, "steady").outcome, "complete");
    })
    .await
}

/// An HTTP/2 client that opens its 16 KiB stream window again at about 32 KiB/s takes 128 KiB
/// over several send timeouts without being cut: the gateway hands hyper 16 KiB at a time, so
/// the body is asked for more every half second even though the upstream's reads grow to 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_http2_reader_is_not_cut() {
    bounded(30, async {
        let send_timeout = SEND_TIMEOUT;
        let upstream = big_upstream().await;
        let gw = TestGateway::start(&upstream.base_url(), options(send_timeout, 4)).await;
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(16 * 1024);
        let (mut send, _connection) = h2_connect(gw.client_addr, &builder).await;
        let bytes = 128 * 1024;
        let path = format!("/api/big/headers?bytes={bytes}");
        let mut body = h2_get(&mut send, gw.client_addr, &path, "steady-h2").await;
        let started = Instant::now();
        let mut got = 0usize;
        while let Some(data) = body.data().await {
            let data = data.expect("the stream is not cut");
            got += data.len();
            // 32 KiB/s.
            tokio::time::sleep(Duration::from_micros(data.len() as u64 * 30)).await;
            let _ = body.flow_control().release_capacity(data.len());
        }
        let took = started.elapsed();
        assert_eq!(got, bytes + 11, "the whole body arrived");
        assert!(
            took > 3 * send_timeout,
            "not slow enough to mean anything: {took:?}"
        );
        let rows = gw.stop().await;
        assert_eq!(row_of(&rows, "steady-h2").outcome, "complete");
    })
    .await
}
