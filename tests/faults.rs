//! Faults (issue 7): what the gateway does when the upstream or a client misbehaves at the socket
//! level. A proxy's worst failures are not wrong answers but hangs, fake-complete bodies, lost
//! credit records and resources held forever, so each test here provokes one such fault on real
//! sockets and checks what the client sees (a SPEC §5 JSON error, or a visibly cut body), what the
//! ledger records, that the gateway keeps serving others, and that nothing in it panicked.
//!
//! The upstream faults come from the mock upstream's raw mode, a scripted TCP server that writes
//! whatever bytes a test gives it (garbage, oversized heads, half a body) and can stall, close or
//! reset. Nothing
//! sleeps to synchronize: the tests wait on gates, request counts and the sockets themselves.
//! Deadlines (`header_read_timeout`, `upstream.timeout`) are set to fractions of a second so the
//! whole file runs in seconds.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::process;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// No panics
// ---------------------------------------------------------------------------------------------

/// Panics on tokio worker threads: where the gateway's connection and request tasks run (a
/// panic there would only kill one task, silently).
static WORKER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_worker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread
                .name()
                .is_some_and(|name| name.starts_with("tokio-runtime-worker"))
            {
                WORKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

#[track_caller]
fn assert_no_panic() {
    assert_eq!(
        WORKER_PANICS.load(Ordering::SeqCst),
        0,
        "a task panicked on a runtime worker (see the output above)"
    );
}

// ---------------------------------------------------------------------------------------------
// The gateway and requests
// ---------------------------------------------------------------------------------------------

/// A gateway in this process, with worker panics counted.
async fn start_gateway(upstream: &str, options: Options) -> TestGateway {
    count_worker_panics();
    TestGateway::start(upstream, options).await
}

/// `GET url` as the alpha client, with our own request id (to find its ledger row).
fn get(url: &str, id: &str) -> http::Request<TestBody> {
    request("GET", url)
        .header("authorization", bearer(ALPHA_KEY))
        .header("x-request-id", id)
        .body(empty_body())
        .unwrap()
}

/// Reads a response body to its end: the bytes, and whether it ended in an error (cut).
async fn read_body(mut body: hyper::body::Incoming) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(_) => return (bytes, true),
        }
    }
    (bytes, false)
}

const WHOAMI: &str = "/api/whoami";

// ---------------------------------------------------------------------------------------------
// 1. The upstream resets the connection mid-body
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_cuts_the_clients_response_and_is_recorded_as_cut() {
    bounded(20, async {
        let gates = [Gate::new(), Gate::new()];
        let held = gates.clone();
        let up = MockUpstream::raw(move |req| {
            let n = req.number;
            let mut first = raw_head(
                "200 OK",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "4096"),
                    ("x-ofapi-credits-used", "3"),
                    ("x-ofapi-credits-balance", "997"),
                ],
            );
            first.extend_from_slice(br#"{"data":[{"id":1},"#);
            vec![
                Step::send(first),
                Step::Wait(held[n - 1].clone()),
                Step::Reset,
            ]
        })
        .await;
        let gw = start_gateway(&up.base_url(), Options::default()).await;

        for (client, id, gate) in [
            (HttpClient::http1(), "reset-h1", &gates[0]),
            (HttpClient::h2c(), "reset-h2", &gates[1]),
        ] {
            let resp = client
                .send_streaming(get(&gw.url(WHOAMI), id))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{id}: the head came before the reset");
            let mut body = resp.into_body();
            // The first bytes reach the client before the upstream resets...
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert!(!first.is_empty());
            gate.open();
            // ...and then the client sees the body fail, not end as if it were whole.
            let (rest, cut) = read_body(body).await;
            assert!(cut, "{id}: a reset body must reach the client as cut");
            let mut got = first.to_vec();
            got.extend(rest);
            assert_eq!(got, br#"{"data":[{"id":1},"#, "{id}");
        }

        // The gateway carries on.
        let resp = HttpClient::http1().get(&gw.url("/healthz"), None).await;
        assert_eq!(resp.status, 200);
        let rows = gw.stop().await;
        for id in ["reset-h1", "reset-h2"] {
            let row = row_of(&rows, id);
            assert_eq!(row.status, 200, "{row:?}");
            assert_eq!(row.outcome, "cut", "{row:?}");
            assert_eq!(row.credits_used, Some(3), "the headers said so: {row:?}");
        }
        assert_no_panic();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. The upstream stalls
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_silent_before_its_headers_is_504_upstream_timeout() {
    bounded(20, async {
        let up = MockUpstream::raw(|_| vec![Step::Hang]).await;
        let gw = start_gateway(
            &up.base_url(),
            Options {
                upstream_timeout: Duration::from_millis(300),
                ..Options::default()
            },
        )
        .await;
        let started = Instant::now();
        let resp = HttpClient::http1()
            .send(get(&gw.url(WHOAMI), "silent"))
            .await
            .unwrap();
        assert_gateway_error(&resp, 504, "upstream_timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(up.count(), 1);
        let rows = gw.stop().await;
        let row = row_of(&rows, "silent");
        assert_eq!((row.status, row.outcome.as_str()), (504, "error"));
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_while_the_upstream_works_is_504_and_the_call_is_still_recorded() {
    bounded(20, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let gw = start_gateway(
            &mock.base_url(),
            Options {
                request_timeout: Duration::from_millis(300),
                upstream_timeout: Duration::from_secs(15),
                ..Options::default()
            },
        )
        .await;
        let resp = HttpClient::http1()
            .send(get(&gw.url(WHOAMI), "too-slow"))
            .await
            .unwrap();
        assert_gateway_error(&resp, 504, "upstream_timeout");
        // The upstream did the call all the same, and charged for it.
        gate.open();
        let rows = gw.stop().await;
        let row = row_of(&rows, "too-slow");
        assert_eq!(row.status, 504, "the status the client saw: {row:?}");
        assert_eq!(row.credits_used, Some(1), "{row:?}");
        assert_eq!(row.outcome, "cut", "{row:?}");
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_has_the_response_cut_after_upstream_timeout() {
    bounded(20, async {
        let up = MockUpstream::raw(|_| {
            let mut first = raw_head(
                "200 OK",
                &[
                    ("content-type", "application/octet-stream"),
                    ("transfer-encoding", "chunked"),
                ],
            );
            first.extend(raw_chunk(b"the first piece"));
            vec![Step::send(first), Step::Hang]
        })
        .await;
        let timeout = Duration::from_millis(400);
        let gw = start_gateway(
            &up.base_url(),
            Options {
                upstream_timeout: timeout,
                // Longer than the test: only the stall guard can end the response.
                request_timeout: Duration::from_secs(60),
                ..Options::default()
            },
        )
        .await;
        for (client, id) in [
            (HttpClient::http1(), "stall-h1"),
            (HttpClient::h2c(), "stall-h2"),
        ] {
            let resp = client
                .send_streaming(get(&gw.url(WHOAMI), id))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"the first piece");
            let waiting = Instant::now();
            let (rest, cut) = read_body(body).await;
            let waited = waiting.elapsed();
            assert!(cut, "{id}: a stalled body ends cut, not complete");
            assert!(rest.is_empty());
            assert!(
                waited >= timeout - Duration::from_millis(50),
                "{id}: cut after {waited:?}, before upstream.timeout"
            );
            assert!(
                waited < Duration::from_secs(5),
                "{id}: cut after {waited:?}"
            );
        }
        let rows = gw.stop().await;
        for id in ["stall-h1", "stall-h2"] {
            let row = row_of(&rows, id);
            assert_eq!((row.status, row.outcome.as_str()), (200, "cut"), "{row:?}");
        }
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_upstream_body_is_not_cut() {
    bounded(20, async {
        // 12 pieces 50 ms apart: longer than upstream.timeout in all, never silent for long.
        let up = MockUpstream::raw(|_| {
            let mut steps = vec![Step::send(raw_head(
                "200 OK",
                &[
                    ("content-type", "text/plain"),
                    ("transfer-encoding", "chunked"),
                ],
            ))];
            for i in 0..12 {
                steps.push(Step::Pause(Duration::from_millis(50)));
                steps.push(Step::send(raw_chunk(format!("piece {i}\n").as_bytes())));
            }
            steps.push(Step::send(b"0\r\n\r\n".to_vec()));
            steps
        })
        .await;
        let gw = start_gateway(
            &up.base_url(),
            Options {
                upstream_timeout: Duration::from_millis(400),
                ..Options::default()
            },
        )
        .await;
        let started = Instant::now();
        let resp = HttpClient::http1()
            .send_streaming(get(&gw.url(WHOAMI), "steady"))
            .await
            .unwrap();
        let (bytes, cut) = read_body(resp.into_body()).await;
        assert!(!cut);
        assert!(started.elapsed() >= Duration::from_millis(500));
        let expected: String = (0..12).map(|i| format!("piece {i}\n")).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
        let rows = gw.stop().await;
        assert_eq!(row_of(&rows, "steady").outcome, "complete");
        assert_no_panic();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. The upstream sends garbage, non-JSON, or oversized heads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_garbage_is_502_upstream_unavailable() {
    bounded(20, async {
        let garbage: Vec<Vec<u8>> = vec![
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            vec![
                0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
            ],
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n{}".to_vec(),
            b"HTTP/1.1 2000 OK\r\n\r\n".to_vec(),
            // A head that never ends before the connection does.
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n".to_vec(),
        ];
        let cases = garbage.len();
        let up = MockUpstream::raw(move |req| {
            vec![Step::send(garbage[req.number - 1].clone()), Step::Close]
        })
        .await;
        let gw = start_gateway(&up.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        for case in 1..=cases {
            let resp = client
                .send(get(&gw.url(WHOAMI), &format!("garbage-{case}")))
                .await
                .unwrap();
            let body = assert_gateway_error(&resp, 502, "upstream_unavailable");
            assert!(!body.to_string().contains("SSH"), "{body}");
        }
        assert_eq!(up.count(), cases);
        let rows = gw.stop().await;
        for case in 1..=cases {
            let row = row_of(&rows, &format!("garbage-{case}"));
            assert_eq!((row.status, row.outcome.as_str()), (502, "error"));
        }
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_200_passes_through_unchanged_with_its_credits_counted_unknown() {
    bounded(20, async {
        const HTML: &str = "<html><body>maintenance {\"_meta\":{\"_credits\":{\"used\":9}}}";
        const NOT_JSON: &str = "{\"data\": [1, 2, oops";
        let mock = MockUpstream::start(|req| {
            if req.header("x-request-id") == Some("html") {
                Reply::status(200)
                    .header("content-type", "text/html; charset=utf-8")
                    .body(HTML)
            } else {
                Reply::json(200, NOT_JSON)
            }
        })
        .await;
        let gw = start_gateway(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let html = client.send(get(&gw.url(WHOAMI), "html")).await.unwrap();
        assert_eq!(html.status, 200);
        assert_eq!(html.text(), HTML);
        assert_eq!(
            html.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let broken = client.send(get(&gw.url(WHOAMI), "not-json")).await.unwrap();
        assert_eq!(broken.status, 200);
        assert_eq!(broken.text(), NOT_JSON);
        assert_eq!(broken.header("content-type"), Some("application/json"));

        let metrics = gw.metrics();
        let unknown: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("ofapi_gateway_credits_unknown_total{"))
            .filter(|l| l.contains("client=\"alpha\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(unknown, 2.0, "{metrics}");
        let rows = gw.stop().await;
        for id in ["html", "not-json"] {
            let row = row_of(&rows, id);
            assert_eq!(row.status, 200);
            assert_eq!(row.credits_used, None, "unknown, not guessed: {row:?}");
            assert_eq!(row.outcome, "complete");
        }
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upstream_heads_are_502_and_the_gateway_carries_on() {
    bounded(20, async {
        let up = MockUpstream::raw(|req| match req.number {
            1 => {
                let big = "b".repeat(200 * 1024);
                let mut bytes = raw_head("200 OK", &[("x-big", &big), ("content-length", "2")]);
                bytes.extend_from_slice(b"{}");
                vec![Step::send(bytes), Step::Close]
            }
            2 => {
                let names: Vec<(String, String)> = (0..1000)
                    .map(|i| (format!("x-h-{i}"), "v".to_owned()))
                    .collect();
                let mut headers: Vec<(&str, &str)> = names
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                headers.push(("content-length", "2"));
                let mut bytes = raw_head("200 OK", &headers);
                bytes.extend_from_slice(b"{}");
                vec![Step::send(bytes), Step::Close]
            }
            _ => vec![Step::send(raw_fixture())],
        })
        .await;
        let gw = start_gateway(&up.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        for id in ["one-200k-header", "a-thousand-headers"] {
            let resp = client.send(get(&gw.url(WHOAMI), id)).await.unwrap();
            assert_gateway_error(&resp, 502, "upstream_unavailable");
            assert!(resp.everything().len() < 4096, "{id}: nothing of it passed");
        }
        let resp = client.send(get(&gw.url(WHOAMI), "normal")).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), FIXTURE);
        let rows = gw.stop().await;
        assert_eq!(row_of(&rows, "one-200k-header").status, 502);
        assert_eq!(row_of(&rows, "a-thousand-headers").status, 502);
        assert_eq!(row_of(&rows, "normal").credits_used, Some(1));
        assert_no_panic();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. The upstream goes down and comes back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_goes_down_is_502_and_is_used_again_when_it_comes_back() {
    bounded(20, async {
        let up = MockUpstream::raw(|_| vec![Step::send(raw_fixture())]).await;
        let addr = up.addr;
        let gw = start_gateway(&up.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        let resp = client.send(get(&gw.url(WHOAMI), "before")).await.unwrap();
        assert_eq!(resp.status, 200);

        // Down: the listener and the gateway's pooled connection are closed.
        up.stop().await;
        for id in ["down-1", "down-2"] {
            let resp = client.send(get(&gw.url(WHOAMI), id)).await.unwrap();
            assert_gateway_error(&resp, 502, "upstream_unavailable");
        }

        // Back on the same port: the next request goes through, no restart needed.
        let up = MockUpstream::raw_on(addr, |_| vec![Step::send(raw_fixture())]).await;
        let resp = client.send(get(&gw.url(WHOAMI), "after")).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), FIXTURE);
        assert_eq!(up.count(), 1);
        let rows = gw.stop().await;
        assert_eq!(row_of(&rows, "before").outcome, "complete");
        assert_eq!(row_of(&rows, "down-1").status, 502);
        assert_eq!(row_of(&rows, "after").credits_used, Some(1));
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_the_upstream_closes_are_not_used_again() {
    bounded(20, async {
        // Every answer is followed by a close, as an upstream whose keep-alive timeout is
        // shorter than the gateway's does. The gateway must notice the close before it picks
        // the connection again, or, when the close comes just as it is picked, send the request
        // again on another one (the request never went out). Taking a closed connection with
        // neither check fails this test at the second call.
        let up = MockUpstream::raw(|_| vec![Step::send(raw_fixture()), Step::Close]).await;
        let gw = start_gateway(&up.base_url(), Options::default()).await;
        let client = HttpClient::http1();
        for i in 0..20 {
            let resp = client
                .send(get(&gw.url(WHOAMI), &format!("call-{i}")))
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "call {i}: {}", resp.text());
            assert_eq!(resp.text(), FIXTURE);
        }
        // Each request reached the upstream once: none was lost, none sent twice.
        assert_eq!(up.count(), 20);
        let rows = gw.stop().await;
        assert!(rows
            .iter()
            .all(|r| r.status == 200 && r.outcome == "complete"));
        assert_eq!(rows.len(), 20);
        assert_no_panic();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. Slow and idle clients
// ---------------------------------------------------------------------------------------------

const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// A gateway with a short `header_read_timeout`, and the mock it forwards to.
async fn impatient_gateway(max_connections: usize) -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(|_| Reply::fixture()).await;
    let gw = start_gateway(
        &mock.base_url(),
        Options {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections,
            ..Options::default()
        },
    )
    .await;
    (mock, gw)
}

#[track_caller]
fn assert_closed_after_the_timeout(what: &str, waited: Duration) {
    assert!(
        waited >= HEADER_READ_TIMEOUT - Duration::from_millis(50),
        "{what}: closed after {waited:?}, before header_read_timeout"
    );
    assert!(
        waited < HEADER_READ_TIMEOUT * 6,
        "{what}: closed only after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_client_is_cut_off_at_the_header_read_timeout_while_others_are_served() {
    bounded(20, async {
        let (mock, gw) = impatient_gateway(10_000).await;
        let head = format!(
            "GET /api/whoami HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(200)
        );
        let stream = TcpStream::connect(gw.client_addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let started = Instant::now();
        // One byte every 50 ms: the head would take over 15 s.
        let trickle = tokio::spawn(async move {
            let mut sent = 0;
            for byte in head.bytes() {
                if writer.write_all(&[byte]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sent, head.len())
        });

        // Meanwhile other clients are served as usual.
        let client = HttpClient::http1();
        for _ in 0..3 {
            let resp = client.get(&gw.url(WHOAMI), Some(ALPHA_KEY)).await;
            assert_eq!(resp.status, 200);
        }
        assert!(!trickle.is_finished());

        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
        assert_closed_after_the_timeout("slow loris", started.elapsed());
        assert!(
            received.is_empty(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&received)
        );
        trickle.abort();
        assert_eq!(mock.count(), 3, "the slow request never reached the upstream");
        gw.stop().await;
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    bounded(20, async {
        let (_mock, gw) = impatient_gateway(10_000).await;
        let mut silent = TcpStream::connect(gw.client_addr).await.unwrap();
        let started = Instant::now();
        let received = read_to_close(&mut silent).await;
        assert_closed_after_the_timeout("silent connection", started.elapsed());
        assert!(received.is_empty());
        // The same for one that sent the first bytes of an HTTP/2 preface and stopped.
        let mut partial = TcpStream::connect(gw.client_addr).await.unwrap();
        partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let started = Instant::now();
        read_to_close(&mut partial).await;
        assert_closed_after_the_timeout("half a preface", started.elapsed());
        gw.stop().await;
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    bounded(20, async {
        let (_mock, gw) = impatient_gateway(10_000).await;

        // HTTP/1.1: one request, then nothing.
        let mut h1 = TcpStream::connect(gw.client_addr).await.unwrap();
        h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let received = read_to_close(&mut h1).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
        assert_closed_after_the_timeout("idle HTTP/1.1 keep-alive", started.elapsed());

        // HTTP/2 (prior knowledge): one request, then nothing.
        let stream = TcpStream::connect(gw.client_addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(
                request("GET", &gw.url("/healthz"))
                    .body(empty_body())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        let started = Instant::now();
        // The gateway sends GOAWAY and closes; the client's connection task then ends.
        let _ = conn.await.unwrap();
        assert_closed_after_the_timeout("idle HTTP/2", started.elapsed());
        gw.stop().await;
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_closed_as_idle() {
    bounded(20, async {
        let (mock, gw) = impatient_gateway(10_000).await;
        // The headers come at once; the body takes three header_read_timeouts to arrive.
        let body = format!(r#"{{"label":"{}"}}"#, "s".repeat(30));
        let path = tracking_link_path(ACCOUNT);
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(gw.client_addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        for piece in body.as_bytes().chunks(body.len().div_ceil(6)) {
            tokio::time::sleep(HEADER_READ_TIMEOUT / 2).await;
            stream.write_all(piece).await.unwrap();
        }
        let received = read_to_close(&mut stream).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with(FIXTURE), "{text}");
        assert_eq!(mock.received()[0].body, body.as_bytes());
        gw.stop().await;
        assert_no_panic();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 6. Many idle connections: a cap, and bounded memory
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_new_connection_is_closed_at_once_and_service_resumes_when_slots_free()
{
    bounded(20, async {
        const CAP: usize = 8;
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = start_gateway(
            &mock.base_url(),
            Options {
                max_connections: CAP,
                // The idle connections stay for the whole test.
                header_read_timeout: Duration::from_secs(30),
                ..Options::default()
            },
        )
        .await;
        let mut idle = Vec::new();
        for _ in 0..CAP {
            idle.push(TcpStream::connect(gw.client_addr).await.unwrap());
        }
        // Accepted after the first CAP (the backlog is first in, first out): closed at once.
        let mut over = TcpStream::connect(gw.client_addr).await.unwrap();
        let started = Instant::now();
        let _ = over
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await;
        let received = read_to_close(&mut over).await;
        assert!(
            received.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&received)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The admin listener has its own cap: probes still work.
        let health = HttpClient::http1()
            .get(&format!("http://{}/healthz", gw.admin_addr), None)
            .await;
        assert_eq!(health.status, 200);

        // Some idle clients leave: their slots come back.
        idle.truncate(CAP / 2);
        let client = HttpClient::http1();
        let resp = loop {
            match client.send(get(&gw.url(WHOAMI), "after-cap")).await {
                Ok(resp) => break resp,
                // Not yet noticed that they left: the connection was closed at once again.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), FIXTURE);
        drop(idle);
        gw.stop().await;
        assert_no_panic();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_keep_the_real_binarys_memory_bounded() {
    bounded(60, async {
        const SILENT: usize = 2000;
        const KEEP_ALIVE: usize = 500;
        const MIB: u64 = 1024 * 1024;
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:0"
header_read_timeout = "60s"
max_connections = 3000

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "{upstream}"

[ledger]
path = "{ledger}"

[[clients]]
name = "alpha"
key_sha256 = "{alpha}"
"#,
            upstream = mock.base_url(),
            ledger = dir.path().join("ledger.sqlite").display(),
            alpha = sha256_hex(ALPHA_KEY.as_bytes()),
        );
        let served = process::GatewayProcess::start(dir.path(), &toml).await;
        let client_addr = served.client_addr;
        let pid = served.process.child.id().unwrap();
        let url = format!("http://{client_addr}{WHOAMI}");

        // Warm up (pools, allocator), then measure.
        for _ in 0..3 {
            let resp = HttpClient::http1().get(&url, Some(ALPHA_KEY)).await;
            assert_eq!(resp.status, 200);
        }
        let before = process::rss_of(pid);

        // Connections that send nothing.
        let mut idle = Vec::with_capacity(SILENT + KEEP_ALIVE);
        for _ in 0..SILENT {
            idle.push(TcpStream::connect(client_addr).await.unwrap());
        }
        // Accepted after all of them: once it is answered, every silent one has its task.
        let resp = HttpClient::http1().get(&url, Some(ALPHA_KEY)).await;
        assert_eq!(resp.status, 200);
        let silent = process::rss_of(pid).saturating_sub(before);

        // Keep-alive connections left idle after one request.
        for _ in 0..KEEP_ALIVE {
            let mut stream = TcpStream::connect(client_addr).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                .await
                .unwrap();
            let resp = read_response(&mut stream).await;
            assert_eq!(resp.status, 200, "{resp:?}");
            idle.push(stream);
        }
        let total = process::rss_of(pid).saturating_sub(before);
        assert!(
            silent < 12 * MIB,
            "{SILENT} silent connections: RSS +{} KiB ({} bytes each)",
            silent / 1024,
            silent / SILENT as u64
        );
        assert!(
            total < 30 * MIB,
            "{SILENT} silent and {KEEP_ALIVE} idle keep-alive connections: RSS +{} KiB \
             ({} bytes per keep-alive connection)",
            total / 1024,
            total.saturating_sub(silent) / KEEP_ALIVE as u64
        );

        // Still serving, and it stops cleanly with them open.
        let resp = HttpClient::http1().get(&url, Some(ALPHA_KEY)).await;
        assert_eq!(resp.status, 200);
        served.signal("TERM");
        let (status, lines) = served.finish().await;
        assert!(status.success(), "{}", lines.join("\n"));
        drop(idle);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 7. A client leaves after the upstream was called
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_the_call_went_out_still_has_its_credits_recorded() {
    bounded(20, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |req| {
            if req.method == http::Method::PUT {
                Reply::fixture().gated(&held)
            } else {
                Reply::fixture()
            }
        })
        .await;
        let gw = start_gateway(
            &mock.base_url(),
            Options {
                // While the PUT is in flight, nothing else gets in: a way to see it go.
                max_concurrent_requests: 1,
                ..Options::default()
            },
        )
        .await;
        let body = r#"{"label":"left before the answer"}"#;
        let put = format!(
            "PUT {} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALPHA_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: left-early\r\n\r\n{body}",
            tracking_link_path(ACCOUNT),
            body.len()
        );
        let mut leaving = TcpStream::connect(gw.client_addr).await.unwrap();
        leaving.write_all(put.as_bytes()).await.unwrap();
        mock.wait_for_count(1).await;
        drop(leaving);

        // Once the gateway has noticed, its request slot is free again.
        let client = HttpClient::http1();
        loop {
            let resp = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
            if resp.status == 200 {
                break;
            }
            assert_gateway_error(&resp, 503, "overloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Only now does the upstream answer: to nobody, but it charged for the call.
        gate.open();
        let rows = gw.stop().await;
        let row = row_of(&rows, "left-early");
        assert_eq!(row.status, 200, "{row:?}");
        assert_eq!(row.credits_used, Some(1), "{row:?}");
        assert_eq!(row.outcome, "cut", "the client did not get it: {row:?}");
        let received = mock.received();
        assert_eq!(received[0].method, http::Method::PUT);
        assert!(received[0].body_complete);
        assert_no_panic();
    })
    .await
}
