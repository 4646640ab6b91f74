//! The record layer: gives every request its [`Call`] (see `crate::call`), right below the
//! request-id layer so the call knows its id and arrival time. It keeps a clone until the answer's
//! head is out, so that a call the gateway answers itself is recorded then, with what the rescue
//! wrote into it; a forwarded call lives on in its answer's body and is recorded when that ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request_id::{ReceivedAt, RequestId};
use crate::call::{Call, RecordSink};

#[derive(Clone)]
pub struct RecordLayer {
    sink: Arc<dyn RecordSink>,
}

impl RecordLayer {
    pub fn new(sink: Arc<dyn RecordSink>) -> Self {
        Self { sink }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Recorded {
            inner,
            sink: Arc::clone(&self.sink),
        }
    }
}

#[derive(Clone)]
pub struct Recorded<S> {
    inner: S,
    sink: Arc<dyn RecordSink>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Recorded<S>
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
        let ext = req.extensions();
        let call = Call::new(
            Arc::clone(&self.sink),
            ext.get::<RequestId>().map_or("-", RequestId::as_str),
            req.method().clone(),
            ext.get::<ReceivedAt>().map_or_else(Instant::now, |r| r.0),
        );
        req.extensions_mut().insert(call.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // Let go of the call: recorded now unless its answer's body still holds it.
        this.call.take();
        Poll::Ready(result)
    }
}
