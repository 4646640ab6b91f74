//! One call's context, from the moment the stack takes a request to the moment its answer is over.
//!
//! The record layer (`layers::record`) makes a [`Call`] for every request and puts it in the
//! request's extensions; each layer writes what it learned into it (the route, the client, the
//! rate-limit ticket, the budget reservation, a refusal, the upstream's answer). Clones are
//! cheap and share the one context; when the last clone goes (the answer's body has ended, or a
//! call finished in the background is over), the call is recorded exactly once: its [`Record`]
//! goes to the [`RecordSink`] (`record::Recorder`, which hands it to the limiter feedback, the
//! budget settlement, the metrics, the ledger, the access log and the balance watch).
//!
//! So no layer records anything itself, nothing is recorded twice, and a call that ends in an
//! unusual way (refused, cut, abandoned by its client, failed upstream) is recorded like any other.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http::{Method, StatusCode};

use crate::budget::Reservation;
use crate::config::ClientId;
use crate::limiter::Ticket;
use crate::upstream::facts::UpstreamFacts;

/// A call's shared context; see the module docs. Recorded when its last clone is dropped.
#[derive(Clone)]
pub struct Call {
    cell: Arc<CallCell>,
}

struct CallCell {
    facts: Mutex<Facts>,
    sink: Arc<dyn RecordSink>,
}

/// Takes each call's record once it is over.
pub trait RecordSink: Send + Sync + 'static {
    fn record(&self, record: Record);
}

/// What became of a call, as far as the gateway knows when it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Never forwarded: the gateway answered it itself (a refusal, or a local answer).
    Answered,
    /// Forwarded, and the upstream's whole answer was delivered.
    Complete,
    /// Forwarded, and the answer's body ended early (the client went away, the stream broke), or
    /// the client hung up before the answer came and the gateway finished the call without it.
    Cut,
    /// Forwarded, and no answer came back from the upstream (connect failure, timeout).
    Failed,
}

impl Ending {
    /// The `outcome` of the access line and the ledger row.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "refused",
            Self::Complete => "complete",
            Self::Cut => "cut",
            Self::Failed => "error",
        }
    }
}

/// Why the gateway answered a call with an error of its own (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    /// The limit that refused it, for a 429 (`rate_limited_total{scope}`).
    pub scope: Option<&'static str>,
}

/// The route a call was matched to.
#[derive(Clone, Debug)]
pub struct CallRoute {
    /// `PUT /api/fansly/{account}/tracking-links/{id}`: labels metrics and ledger rows.
    pub template: Arc<str>,
    /// The account the path names, if any.
    pub account: Option<String>,
}

/// The upstream's answer to a forwarded call.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    /// From sending the request to the answer's head.
    pub upstream_ms: u64,
    /// What its head said (parsed once, when the head arrived).
    pub headers: UpstreamFacts,
    /// What its body's `_meta` said (all `None` until the body has ended, or when not JSON).
    pub meta: UpstreamFacts,
    /// Whether its body was delivered to its end.
    pub body_complete: bool,
    /// Body bytes handed to the client (after any rewrite).
    pub bytes: u64,
}

/// Everything known of a call; written by the layers, read once into its [`Record`].
#[derive(Default)]
struct Facts {
    request_id: Arc<str>,
    method: Method,
    received_at: Option<Instant>,
    route: Option<CallRoute>,
    client: Option<ClientId>,
    ticket: Option<Ticket>,
    /// The limiter already learned the answer's limits from its head.
    limiter_fed: bool,
    reservation: Option<Arc<Reservation>>,
    forwarded: bool,
    /// The client hung up before the answer; the gateway finished the call in the background.
    detached: bool,
    /// The upstream never answered.
    failed: Option<StatusCode>,
    upstream: Option<UpstreamAnswer>,
    refusal: Option<Refusal>,
}

/// One finished call, as the sinks see it.
#[derive(Clone)]
pub struct Record {
    pub request_id: Arc<str>,
    pub method: Method,
    pub received_at: Instant,
    pub route: Option<CallRoute>,
    pub client: Option<ClientId>,
    pub ticket: Option<Ticket>,
    pub limiter_fed: bool,
    pub reservation: Option<Arc<Reservation>>,
    /// Handed to the upstream client (whatever came of it).
    pub forwarded: bool,
    pub upstream: Option<UpstreamAnswer>,
    pub refusal: Option<Refusal>,
    pub ending: Ending,
    /// The status the client was sent: a refusal's, else the upstream's, else the failure's.
    pub status: StatusCode,
}

/// The status recorded for a forwarded call that has no answer and no failure: the gateway
/// stopped before it could finish it (nginx's "client closed request").
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Call {
    /// A new call, recorded into `sink` when its last clone goes.
    pub fn new(
        sink: Arc<dyn RecordSink>,
        request_id: &str,
        method: Method,
        received_at: Instant,
    ) -> Self {
        let facts = Facts {
            request_id: Arc::from(request_id),
            method,
            received_at: Some(received_at),
            ..Facts::default()
        };
        Self {
            cell: Arc::new(CallCell {
                facts: Mutex::new(facts),
                sink,
            }),
        }
    }

    fn facts(&self) -> MutexGuard<'_, Facts> {
        // A panic while holding this lock leaves plain data behind: carry on with it.
        self.cell.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request_id(&self) -> Arc<str> {
        Arc::clone(&self.facts().request_id)
    }

    pub fn set_route(&self, template: &Arc<str>, account: Option<&str>) {
        self.facts().route = Some(CallRoute {
            template: Arc::clone(template),
            account: account.map(str::to_owned),
        });
    }

    pub fn set_client(&self, client: &ClientId) {
        self.facts().client = Some(client.clone());
    }

    pub fn set_reservation(&self, reservation: Arc<Reservation>) {
        self.facts().reservation = Some(reservation);
    }

    pub fn set_ticket(&self, ticket: Ticket) {
        self.facts().ticket = Some(ticket);
    }

    /// The limiter has learned this answer's limits; the record need not report them again.
    pub fn limiter_fed(&self) {
        self.facts().limiter_fed = true;
    }

    /// The call was handed to the upstream client.
    pub fn forwarded(&self) {
        self.facts().forwarded = true;
    }

    /// Its client hung up before the answer; it goes on in the background, recorded as cut.
    pub fn detached(&self) {
        self.facts().detached = true;
    }

    /// The upstream never answered; the client was sent `status`.
    pub fn failed(&self, status: StatusCode) {
        self.facts().failed = Some(status);
    }

    /// The upstream's answer head arrived.
    pub fn answered(&self, status: StatusCode, upstream_ms: u64, headers: UpstreamFacts) {
        self.facts().upstream = Some(UpstreamAnswer {
            status,
            upstream_ms,
            headers,
            meta: UpstreamFacts::default(),
            body_complete: false,
            bytes: 0,
        });
    }

    /// The answer's body ended, delivered whole or not, with what its `_meta` said.
    pub fn body_ended(&self, meta: UpstreamFacts, complete: bool, bytes: u64) {
        if let Some(answer) = &mut self.facts().upstream {
            answer.meta = meta;
            answer.body_complete = complete;
            answer.bytes = bytes;
        }
    }

    /// What the head of the upstream's answer said, once it has arrived.
    pub fn upstream_headers(&self) -> Option<UpstreamFacts> {
        self.facts().upstream.map(|answer| answer.headers)
    }

    /// The gateway answered with an error of its own (the first refusal counts).
    pub fn refused(&self, refusal: Refusal) {
        let mut facts = self.facts();
        if facts.refusal.is_none() {
            facts.refusal = Some(refusal);
        }
    }

    pub fn client(&self) -> Option<ClientId> {
        self.facts().client.clone()
    }
}

impl Facts {
    fn into_record(self) -> Record {
        let ending = match (self.forwarded, &self.upstream) {
            (false, _) => Ending::Answered,
            (true, Some(answer)) if answer.body_complete && !self.detached => Ending::Complete,
            (true, Some(_)) => Ending::Cut,
            (true, None) if self.failed.is_some() => Ending::Failed,
            (true, None) => Ending::Cut,
        };
        let status = self
            .refusal
            .map(|r| r.status)
            .or(self.upstream.map(|a| a.status))
            .or(self.failed)
            .unwrap_or_else(|| {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_GATEWAY)
            });
        Record {
            request_id: self.request_id,
            method: self.method,
            received_at: self.received_at.unwrap_or_else(Instant::now),
            route: self.route,
            client: self.client,
            ticket: self.ticket,
            limiter_fed: self.limiter_fed,
            reservation: self.reservation,
            forwarded: self.forwarded,
            upstream: self.upstream,
            refusal: self.refusal,
            ending,
            status,
        }
    }
}

impl Drop for CallCell {
    fn drop(&mut self) {
        let facts = std::mem::take(self.facts.get_mut().unwrap_or_else(|p| p.into_inner()));
        self.sink.record(facts.into_record());
    }
}

#[cfg(test)]
mod tests;
