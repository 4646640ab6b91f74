//! `x-request-id` in, out and on every log line: keeps the client's id when it is sane (1–128 of
//! `[A-Za-z0-9._:-]`), else makes a new one; the same id goes to the upstream and on the response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use std::future::Future;
use std::pin::Pin;
use std::task::ready;

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, also kept in the request's extensions for layers that log.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// When the request arrived, for the total time on its log line.
#[derive(Clone, Copy, Debug)]
pub struct ReceivedAt(pub std::time::Instant);

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

#[derive(Clone, Debug)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SetRequestId<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(value) if is_sane(value.as_bytes()) => value.clone(),
            _ => new_id(),
        };
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        req.extensions_mut()
            .insert(ReceivedAt(std::time::Instant::now()));
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Puts the request id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 32 hex characters: a random per-process prefix and a scrambled counter, unique within a
/// process and practically unique across restarts, without a system call per request.
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut seed = [0u8; 8];
        // Without OS randomness the time still makes ids differ across restarts.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            seed = nanos.to_le_bytes();
        }
        u64::from_le_bytes(seed)
    });
    let n = splitmix64(prefix ^ COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&prefix.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut text = [0u8; 32];
    // Hex digits are always a valid header value; neither fallback can happen.
    if hex::encode_to_slice(raw, &mut text).is_err() {
        return HeaderValue::from_static("0");
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_are_not() {
        assert!(is_sane(b"abc-123_X.y:z"));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(&[b'a'; 129]));
    }

    #[test]
    fn new_ids_differ() {
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 32);
    }

    #[test]
    fn a_new_id_is_its_prefix_then_its_scrambled_counter_in_lower_case_hex() {
        let (a, b) = (new_id(), new_id());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        // The same process: the same first half.
        assert_eq!(a[..16], b[..16]);
        assert_ne!(a[16..], b[16..]);
    }
}
