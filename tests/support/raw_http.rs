//! Requests written straight to a socket, for what a `Uri` or a client library would refuse to
//! send (bad bytes, conflicting framing, pipelining), and the responses read back and parsed
//! with `httparse`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// The first complete response at the start of `bytes`, and how many bytes it took; `None` if
/// it has not all arrived. `closed`: the server closed the connection after `bytes`, which ends
/// a body that has no length (HTTP/1.0).
pub fn parse_response(bytes: &[u8], closed: bool) -> Option<(RawResp, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "not an HTTP response ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    let status = response.code.expect("a complete head has a status");
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &bytes[head_len..];
    let (body, used) = if status < 200 || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        (rest.get(..len)?.to_vec(), len)
    } else if closed {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    Some((
        RawResp {
            status,
            headers,
            body,
        },
        head_len + used,
    ))
}

/// A whole chunked body (without trailers) at the start of `rest`, and its length on the wire.
fn dechunk(rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&rest[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => panic!("bad chunk size: {:?}", String::from_utf8_lossy(&rest[at..])),
        };
        at += size_len;
        let size = usize::try_from(size).expect("chunk size");
        if size == 0 {
            return (rest.len() >= at + 2).then_some((body, at + 2));
        }
        body.extend_from_slice(rest.get(at..at + size)?);
        at += size + 2;
    }
}

/// Writes `request` as is (it should say `Connection: close`) and reads the response until the
/// server closes the connection.
///
/// The request is written concurrently with reading, and a failed write is ignored, so that a
/// server answering before it has read the whole request (413) can be observed.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Keep the write half open (no FIN) until the response has been read.
        writer
    });
    let bytes = read_to_close(&mut reader).await;
    write.abort();
    parse_response(&bytes, true)
        .unwrap_or_else(|| {
            panic!(
                "no complete response before the close: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
        .0
}

/// Everything the server said on one connection, and whether it closed it.
#[derive(Debug)]
pub struct Conversation {
    pub answers: Vec<RawResp>,
    /// The server closed (or reset) the connection.
    pub closed: bool,
}

impl Conversation {
    #[track_caller]
    pub fn only_answer(&self) -> &RawResp {
        assert_eq!(
            self.answers.len(),
            1,
            "expected exactly one response: {self:?}"
        );
        &self.answers[0]
    }
}

/// How long to keep listening once a response has arrived, for a second one or the close.
const LINGER: Duration = Duration::from_millis(300);
/// The longest a conversation may take.
pub const CONVERSATION_BOUND: Duration = Duration::from_secs(5);

/// Writes `request` (in the background, ignoring a failed write, and without closing the write
/// side) and reads every response until the server closes, or until [`LINGER`] passes without a
/// byte once at least one response has arrived.
pub async fn converse(addr: SocketAddr, request: &[u8]) -> Conversation {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let conversation = listen(&mut reader).await;
    write.abort();
    conversation
}

async fn listen(reader: &mut (impl AsyncReadExt + Unpin)) -> Conversation {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        let wait = if answers.is_empty() {
            CONVERSATION_BOUND.saturating_sub(started.elapsed())
        } else {
            LINGER
        };
        match tokio::time::timeout(wait, reader.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                while let Some((answer, used)) = parse_response(&bytes, false) {
                    answers.push(answer);
                    bytes.drain(..used);
                }
            }
        }
    };
    // A body without a length (HTTP/1.0) ends with the connection.
    if closed {
        if let Some((answer, used)) = parse_response(&bytes, true) {
            answers.push(answer);
            bytes.drain(..used);
        }
    }
    assert!(
        bytes.is_empty() || !closed,
        "the server left an incomplete response: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    Conversation { answers, closed }
}

/// Reads one response off `stream`, leaving the connection open.
pub async fn read_response(stream: &mut TcpStream) -> RawResp {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read a response");
        assert!(n > 0, "closed mid-response");
        bytes.extend_from_slice(&buf[..n]);
        if let Some((response, _)) = parse_response(&bytes, false) {
            return response;
        }
    }
}

/// Reads from `stream` until the peer closes it (EOF or reset); returns what arrived.
pub async fn read_to_close(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}
