//! Request and response bodies for the tests: whole ones, and bodies of any length generated as
//! they are polled (so that tens of megabytes stream without being held), with the SHA-256 to
//! check that they arrived intact.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Frame;
use sha2::{Digest, Sha256};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the test clients send and every response the mock sends.
pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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

/// The hex SHA-256 of `bytes` (as a config's `key_sha256` holds a key's).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
