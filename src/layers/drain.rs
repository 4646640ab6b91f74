//! Lingering close for request bodies. When the gateway answers early (401, 413, 415, ...)
//! while an HTTP/1.1 client is still uploading, hyper closes the connection with unread data,
//! the kernel resets it, and the client sees a broken pipe instead of the answer (an SDK would
//! retry the upload). A request body dropped before its end is therefore read and discarded in
//! the background, for a bounded time and size, as nginx's lingering close does.
//!
//! Its errors are [`ClientBodyError`]s: a body that breaks (bad chunked framing, a client that
//! resets its stream or disconnects mid-upload) is the client's fault, answered 400, not a 502.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// At most this long...
const LINGER_TIME: Duration = Duration::from_secs(5);
/// ...and this many bytes are read and thrown away after an early answer.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// The client's request body failed: malformed framing, or the client gave up before its end.
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// hyper's request body, drained in the background if dropped before its end.
pub struct DrainOnDrop {
    inner: Option<Incoming>,
}

impl DrainOnDrop {
    pub fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(ClientBodyError))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}
