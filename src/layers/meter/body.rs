//! The response body the meter layer hands back: the upstream body, passed through frame by
//! frame, read by a [`MetaScanner`] on the way and optionally rewritten by a
//! [`NextPageRewriter`], reporting exactly once how it ended.
//!
//! The report ([`BodyEnd`]) is what the credit log line, metrics, ledger and budget are fed from.
//! It fires when the inner body ends (its last frame, or `is_end_stream` after a data frame,
//! since hyper stops polling a body that says it has ended), when it fails, or when the body is
//! dropped before its end because the client went away.
//!
//! A body dropped before its end whose credits are still unknown (a JSON answer whose headers did
//! not say them, its `_meta` not read yet) can be set to read the rest on a background task
//! ([`MeteredBody::finish_when_dropped`]): the upstream charged for the whole answer whether or
//! not the client stayed for it, and its `_meta` is at the end.
//!
//! # Content-Length
//!
//! With a rewriter whose [`NextPageRewriter::may_change_length`] is true (see
//! [`MeteredBody::may_change_length`]), the body's length is no longer known in advance: the
//! caller must remove the response's `Content-Length` header before sending it (otherwise hyper
//! fails the response when the lengths differ), and `size_hint` stops being exact.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::task::TaskTracker;

use super::rewrite::NextPageRewriter;
use super::scan::MetaScanner;
use crate::body::{Body, BoxError};
use crate::upstream::facts::UpstreamFacts;

/// How a metered body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyOutcome {
    /// The upstream body was read to its end.
    Complete,
    /// The upstream body failed; the error went on to the client side.
    Error,
    /// Dropped before its end: the client went away (or the server gave up on it).
    Dropped,
}

/// The one report of a metered body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyEnd {
    /// The `_meta` figures read (all `None` for a body not scanned as JSON).
    pub found: UpstreamFacts,
    pub outcome: BodyOutcome,
    /// Data bytes handed on (after any rewrite).
    pub bytes: u64,
}

impl BodyEnd {
    /// The report of a call that never had a body (its request failed).
    pub fn empty() -> Self {
        Self {
            found: UpstreamFacts::default(),
            outcome: BodyOutcome::Error,
            bytes: 0,
        }
    }
}

/// Called once with the body's [`BodyEnd`].
pub type OnEnd = Box<dyn FnOnce(BodyEnd) + Send>;

/// How a body dropped before its end is read to its end in the background.
#[derive(Clone, Debug)]
pub struct FinishWhenDropped {
    /// Tracks the background read, so a graceful stop waits for it.
    pub detached: TaskTracker,
    /// The longest the background read may take.
    pub timeout: Duration,
    /// The most bytes it reads; past them the body is reported with what was found.
    pub limit: u64,
}

/// The stack's [`Body`], metered; see the module docs.
pub struct MeteredBody {
    inner: Body,
    /// Reads `_meta` when the response is JSON and no rewriter already does (the rewriter runs
    /// the same tokenizer, so one pass serves both).
    scanner: Option<MetaScanner>,
    rewriter: Option<NextPageRewriter>,
    /// Whether `found` should be reported at all (the response is JSON).
    json: bool,
    bytes: u64,
    /// Trailers that arrived while the rewriter still held bytes: sent after those bytes.
    trailers: Option<HeaderMap>,
    /// Set once the inner body has ended or failed; nothing more is polled.
    done: bool,
    /// Taken when the report is made, which makes it happen at most once.
    on_end: Option<OnEnd>,
    /// Set: dropped early with its credits unknown, the rest is read in the background.
    finish: Option<FinishWhenDropped>,
}

impl MeteredBody {
    /// Meters `inner`. `json` says whether to look for `_meta` (a response with a JSON
    /// content type and no content encoding); `rewriter` rewrites `next_page` links;
    /// `on_end` receives the one report.
    pub fn new(
        inner: Body,
        json: bool,
        rewriter: Option<NextPageRewriter>,
        on_end: impl FnOnce(BodyEnd) + Send + 'static,
    ) -> Self {
        Self {
            inner,
            scanner: (json && rewriter.is_none()).then(MetaScanner::new),
            rewriter,
            json,
            bytes: 0,
            trailers: None,
            done: false,
            on_end: Some(Box::new(on_end)),
            finish: None,
        }
    }

    /// Dropped before its end with its credits still unknown, the body is read to its end on a
    /// background task (see the module docs), within `finish`'s bounds, and reported then.
    pub fn finish_when_dropped(mut self, finish: FinishWhenDropped) -> Self {
        self.finish = Some(finish);
        self
    }

    /// Reads what is left of the inner body for `_meta` (nothing is handed on), then reports
    /// the body as dropped. Bounded by `limit` bytes; the caller bounds the time.
    async fn read_rest(mut self, limit: u64) {
        let mut read = 0u64;
        while read <= limit {
            match self.inner.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len() as u64;
                        if let Some(scanner) = &mut self.scanner {
                            scanner.feed(&data);
                        }
                        if let Some(rewriter) = &mut self.rewriter {
                            drop(rewriter.push(data));
                        }
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        self.end(BodyOutcome::Dropped);
    }

    /// True when the body's length may differ from the upstream's: the caller must then remove
    /// any `Content-Length` header from the response.
    pub fn may_change_length(&self) -> bool {
        self.rewriter
            .as_ref()
            .is_some_and(NextPageRewriter::may_change_length)
    }

    fn found(&self) -> UpstreamFacts {
        match (&self.rewriter, &self.scanner) {
            _ if !self.json => UpstreamFacts::default(),
            (Some(rewriter), _) => rewriter.found(),
            (None, Some(scanner)) => scanner.found(),
            (None, None) => UpstreamFacts::default(),
        }
    }

    fn held_len(&self) -> usize {
        self.rewriter.as_ref().map_or(0, NextPageRewriter::held_len)
    }

    /// Reads and rewrites one data chunk.
    fn pass(&mut self, data: Bytes) -> Bytes {
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(&data);
        }
        match &mut self.rewriter {
            Some(rewriter) => rewriter.push(data),
            None => data,
        }
    }

    /// What the rewriter still holds, now that no more input will come.
    fn flush(&mut self) -> Bytes {
        self.rewriter
            .as_mut()
            .map_or_else(Bytes::new, NextPageRewriter::finish)
    }

    fn end(&mut self, outcome: BodyOutcome) {
        self.done = true;
        if let Some(on_end) = self.on_end.take() {
            on_end(BodyEnd {
                found: self.found(),
                outcome,
                bytes: self.bytes,
            });
        }
    }

    fn data(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.bytes += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(trailers) = this.trailers.take() {
            this.end(BodyOutcome::Complete);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    this.end(BodyOutcome::Error);
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    let tail = this.flush();
                    if tail.is_empty() {
                        this.end(BodyOutcome::Complete);
                        return Poll::Ready(None);
                    }
                    let frame = this.data(tail);
                    this.end(BodyOutcome::Complete);
                    return frame;
                }
            };
            let trailers = match frame.into_data() {
                Ok(data) => {
                    let mut out = this.pass(data);
                    let ended = this.inner.is_end_stream();
                    if ended {
                        let tail = this.flush();
                        if !tail.is_empty() {
                            let mut joined = BytesMut::from(&out[..]);
                            joined.extend_from_slice(&tail);
                            out = joined.freeze();
                        }
                    }
                    if out.is_empty() {
                        if ended {
                            this.end(BodyOutcome::Complete);
                            return Poll::Ready(None);
                        }
                        // All held back (or an empty frame): nothing to send yet.
                        continue;
                    }
                    let frame = this.data(out);
                    if ended {
                        this.end(BodyOutcome::Complete);
                    }
                    return frame;
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => trailers,
                    // http-body 1 frames are data or trailers; anything else is passed on.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            };
            // Trailers end the body; bytes the rewriter still holds go first.
            let tail = this.flush();
            if tail.is_empty() {
                this.end(BodyOutcome::Complete);
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            this.trailers = Some(trailers);
            return this.data(tail);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && (self.done || (self.inner.is_end_stream() && self.held_len() == 0))
    }

    fn size_hint(&self) -> SizeHint {
        if self.done || self.trailers.is_some() {
            return SizeHint::with_exact(0);
        }
        let inner = self.inner.size_hint();
        if self.may_change_length() {
            return SizeHint::default();
        }
        let held = self.held_len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.on_end.is_none() {
            return;
        }
        // A body hyper never polled because it was already at its end is complete, not dropped.
        if self.trailers.is_none() && self.inner.is_end_stream() && self.held_len() == 0 {
            return self.end(BodyOutcome::Complete);
        }
        let unknown = !self.done && self.json && self.found().credits_used.is_none();
        if let (true, Some(finish)) = (unknown, self.finish.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let rest = MeteredBody {
                    inner: std::mem::replace(&mut self.inner, crate::body::empty()),
                    scanner: self.scanner.take(),
                    rewriter: self.rewriter.take(),
                    json: self.json,
                    bytes: self.bytes,
                    trailers: None,
                    done: false,
                    on_end: self.on_end.take(),
                    finish: None,
                };
                // Past the deadline `rest` is dropped: it reports what it found by then.
                let read = tokio::time::timeout(finish.timeout, rest.read_rest(finish.limit));
                finish.detached.spawn_on(read, &runtime);
                return;
            }
        }
        self.end(BodyOutcome::Dropped);
    }
}

impl std::fmt::Debug for MeteredBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody")
            .field("json", &self.json)
            .field("rewriting", &self.rewriter.is_some())
            .field("bytes", &self.bytes)
            .field("done", &self.done)
            .field("reported", &self.on_end.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::stream;
    use http_body::Body as _;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::body::{boxed, full};
    use crate::layers::meter::scan::tests::{fixture_found, FIXTURE};

    type Reports = Arc<Mutex<Vec<BodyEnd>>>;

    fn recorder() -> (Reports, impl FnOnce(BodyEnd) + Send + 'static) {
        let reports = Reports::default();
        let sink = Arc::clone(&reports);
        (reports, move |end| sink.lock().unwrap().push(end))
    }

    fn chunked(pieces: Vec<Result<Frame<Bytes>, BoxError>>) -> Body {
        boxed(StreamBody::new(stream::iter(pieces)))
    }

    fn fixture_in(pieces: usize) -> Vec<Result<Frame<Bytes>, BoxError>> {
        FIXTURE
            .chunks(FIXTURE.len().div_ceil(pieces))
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect()
    }

    #[tokio::test]
    async fn a_complete_body_passes_through_and_reports_once() {
        let (reports, on_end) = recorder();
        let body = MeteredBody::new(chunked(fixture_in(7)), true, None, on_end);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], FIXTURE);
        assert_eq!(
            *reports.lock().unwrap(),
            [BodyEnd {
                found: fixture_found(),
                outcome: BodyOutcome::Complete,
                bytes: FIXTURE.len() as u64,
            }]
        );
    }

    #[tokio::test]
    async fn a_body_not_scanned_as_json_reports_nothing_found() {
        let (reports, on_end) = recorder();
        let body = MeteredBody::new(chunked(fixture_in(3)), false, None, on_end);
        body.collect().await.unwrap();
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].found, UpstreamFacts::default());
    }

    #[tokio::test]
    async fn an_inner_error_is_passed_on_and_reported_once() {
        let (reports, on_end) = recorder();
        let mut pieces = fixture_in(4);
        pieces.truncate(2);
        pieces.push(Err("upstream reset".into()));
        pieces.push(Ok(Frame::data(Bytes::from_static(b"never"))));
        let mut body = MeteredBody::new(chunked(pieces), true, None, on_end);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
        drop(body);
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, BodyOutcome::Error);
        assert_eq!(reports[0].bytes, FIXTURE.len().div_ceil(4) as u64 * 2);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_reports_dropped_once() {
        let (reports, on_end) = recorder();
        let mut body = MeteredBody::new(chunked(fixture_in(5)), true, None, on_end);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(reports.lock().unwrap().is_empty());
        drop(body);
        assert_eq!(
            *reports.lock().unwrap(),
            [BodyEnd {
                found: UpstreamFacts::default(),
                outcome: BodyOutcome::Dropped,
                bytes: first.len() as u64,
            }]
        );
    }

    #[tokio::test]
    async fn a_body_that_says_it_ended_reports_complete_with_its_last_frame() {
        let (reports, on_end) = recorder();
        let mut body = MeteredBody::new(full(FIXTURE), true, None, on_end);
        assert_eq!(body.size_hint().exact(), Some(FIXTURE.len() as u64));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], FIXTURE);
        // hyper stops here, without polling for the end.
        assert!(body.is_end_stream());
        assert_eq!(reports.lock().unwrap()[0].outcome, BodyOutcome::Complete);
        drop(body);
        assert_eq!(reports.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_meta_is_read_to_its_end_in_the_background() {
        let (reports, on_end) = recorder();
        let detached = TaskTracker::new();
        let finish = FinishWhenDropped {
            detached: detached.clone(),
            timeout: std::time::Duration::from_secs(5),
            limit: 1 << 20,
        };
        let mut body = MeteredBody::new(chunked(fixture_in(5)), true, None, on_end)
            .finish_when_dropped(finish.clone());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        drop(body);
        detached.close();
        detached.wait().await;
        assert_eq!(
            *reports.lock().unwrap(),
            [BodyEnd {
                found: fixture_found(),
                outcome: BodyOutcome::Dropped,
                bytes: first.len() as u64,
            }]
        );

        // Not JSON: there is nothing to find, nothing is read.
        let (reports, on_end) = recorder();
        let mut body = MeteredBody::new(chunked(fixture_in(5)), false, None, on_end)
            .finish_when_dropped(finish.clone());
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(detached.is_empty());
        assert_eq!(reports.lock().unwrap()[0].outcome, BodyOutcome::Dropped);

        // Past its byte limit it reports what it found by then.
        let (reports, on_end) = recorder();
        let mut body = MeteredBody::new(chunked(fixture_in(5)), true, None, on_end)
            .finish_when_dropped(FinishWhenDropped { limit: 0, ..finish });
        body.frame().await.unwrap().unwrap();
        drop(body);
        detached.wait().await;
        assert_eq!(reports.lock().unwrap()[0].found, UpstreamFacts::default());
    }

    #[tokio::test]
    async fn an_empty_body_never_polled_reports_complete_on_drop() {
        let (reports, on_end) = recorder();
        let body = MeteredBody::new(crate::body::empty(), true, None, on_end);
        assert!(body.is_end_stream());
        drop(body);
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, BodyOutcome::Complete);
        assert_eq!(reports[0].bytes, 0);
    }

    #[tokio::test]
    async fn trailers_pass_through_after_held_bytes() {
        let (reports, on_end) = recorder();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let pieces = vec![
            Ok(Frame::data(Bytes::from_static(
                br#"{"_pagination":{"next_page":"https://app.only"#,
            ))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let rewriter = NextPageRewriter::new("https://app.onlyfansapi.com", "http://gw");
        let mut body = MeteredBody::new(chunked(pieces), true, Some(rewriter), on_end);
        let mut data = Vec::new();
        let mut got_trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => got_trailers = Some(f.into_trailers().unwrap()),
            }
        }
        assert_eq!(
            &data[..],
            br#"{"_pagination":{"next_page":"https://app.only"#
        );
        assert_eq!(got_trailers, Some(trailers));
        assert_eq!(reports.lock().unwrap().len(), 1);
        assert_eq!(reports.lock().unwrap()[0].outcome, BodyOutcome::Complete);
    }

    #[tokio::test]
    async fn a_rewriting_body_rewrites_reads_meta_and_drops_the_exact_hint() {
        let (reports, on_end) = recorder();
        let input: &[u8] = br#"{"data":[{"id":1}],"_meta":{"_credits":{"used":2,"balance":5},"_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\/api\/x?offset=1"}}}"#;
        let expected: &[u8] = br#"{"data":[{"id":1}],"_meta":{"_credits":{"used":2,"balance":5},"_pagination":{"next_page":"http:\/\/127.0.0.1:8080\/api\/x?offset=1"}}}"#;
        let pieces = input
            .chunks(5)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let rewriter =
            NextPageRewriter::new("https://app.onlyfansapi.com", "http://127.0.0.1:8080");
        let body = MeteredBody::new(chunked(pieces), true, Some(rewriter), on_end);
        assert!(body.may_change_length());
        assert_eq!(body.size_hint().exact(), None);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], expected);
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, BodyOutcome::Complete);
        assert_eq!(reports[0].bytes, expected.len() as u64);
        assert_eq!(reports[0].found.credits_used, Some(2));
        assert_eq!(reports[0].found.balance, Some(5));
    }

    #[tokio::test]
    async fn a_no_op_rewriter_keeps_the_exact_hint() {
        let (_reports, on_end) = recorder();
        let rewriter = NextPageRewriter::new("https://a", "https://a/");
        let body = MeteredBody::new(full(FIXTURE), true, Some(rewriter), on_end);
        assert!(!body.may_change_length());
        assert_eq!(body.size_hint().exact(), Some(FIXTURE.len() as u64));
    }
}
