use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Method, StatusCode};

use super::*;

/// Keeps every record it is given.
#[derive(Default)]
struct Kept(Mutex<Vec<Record>>);

impl RecordSink for Kept {
    fn record(&self, record: Record) {
        self.0.lock().unwrap().push(record);
    }
}

fn call(kept: &Arc<Kept>) -> Call {
    Call::new(kept.clone(), "req-1", Method::PUT, Instant::now())
}

fn records(kept: &Kept) -> Vec<Record> {
    kept.0.lock().unwrap().clone()
}

#[test]
fn a_call_is_recorded_once_when_its_last_clone_goes() {
    let kept = Arc::new(Kept::default());
    let first = call(&kept);
    let second = first.clone();
    first.set_client(&crate::config::ClientId("alice".into()));
    drop(first);
    assert!(records(&kept).is_empty(), "a clone still holds the call");
    drop(second);
    let records = records(&kept);
    assert_eq!(records.len(), 1);
    assert_eq!(&*records[0].request_id, "req-1");
    assert_eq!(records[0].client.as_ref().unwrap().as_str(), "alice");
    assert_eq!(records[0].method, Method::PUT);
}

#[test]
fn a_refused_call_records_the_refusal_and_its_status() {
    let kept = Arc::new(Kept::default());
    let c = call(&kept);
    let refusal = Refusal {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        scope: Some("client"),
    };
    c.refused(refusal);
    // Only the first refusal counts.
    c.refused(Refusal {
        status: StatusCode::BAD_GATEWAY,
        code: "upstream_unavailable",
        scope: None,
    });
    drop(c);
    let record = &records(&kept)[0];
    assert_eq!(record.ending, Ending::Answered);
    assert_eq!(record.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(record.refusal, Some(refusal));
    assert!(!record.forwarded);
}

#[test]
fn a_forwarded_call_ends_complete_cut_or_failed() {
    let kept = Arc::new(Kept::default());
    let facts = UpstreamFacts {
        credits_used: Some(2),
        ..UpstreamFacts::default()
    };

    let whole = call(&kept);
    whole.forwarded();
    whole.answered(StatusCode::OK, 7, facts);
    whole.body_ended(UpstreamFacts::default(), true, 678);
    drop(whole);

    let cut = call(&kept);
    cut.forwarded();
    cut.answered(StatusCode::OK, 7, facts);
    cut.body_ended(UpstreamFacts::default(), false, 10);
    drop(cut);

    let failed = call(&kept);
    failed.forwarded();
    failed.failed(StatusCode::BAD_GATEWAY);
    drop(failed);

    let abandoned = call(&kept);
    abandoned.forwarded();
    abandoned.detached();
    drop(abandoned);

    let records = records(&kept);
    let endings: Vec<_> = records
        .iter()
        .map(|r| (r.ending, r.status.as_u16()))
        .collect();
    assert_eq!(
        endings,
        [
            (Ending::Complete, 200),
            (Ending::Cut, 200),
            (Ending::Failed, 502),
            (Ending::Cut, 499)
        ]
    );
    let answer = records[0].upstream.unwrap();
    assert_eq!((answer.upstream_ms, answer.bytes), (7, 678));
    assert_eq!(answer.headers.credits_used, Some(2));
}

#[test]
fn a_call_finished_in_the_background_is_cut_even_when_its_body_was_read_whole() {
    let kept = Arc::new(Kept::default());
    let c = call(&kept);
    c.forwarded();
    c.detached();
    c.answered(StatusCode::OK, 1, UpstreamFacts::default());
    c.body_ended(UpstreamFacts::default(), true, 5);
    drop(c);
    assert_eq!(records(&kept)[0].ending, Ending::Cut);
}

#[test]
fn a_refusal_after_forwarding_is_the_status_the_client_saw() {
    let kept = Arc::new(Kept::default());
    let c = call(&kept);
    c.forwarded();
    c.answered(StatusCode::TOO_MANY_REQUESTS, 3, UpstreamFacts::default());
    c.refused(Refusal {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        scope: Some("upstream"),
    });
    c.body_ended(UpstreamFacts::default(), true, 0);
    drop(c);
    let record = &records(&kept)[0];
    assert!(record.forwarded);
    assert_eq!(record.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(record.refusal.unwrap().scope, Some("upstream"));
}
