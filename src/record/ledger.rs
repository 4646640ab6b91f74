//! The ledger row of every forwarded call (what the gateway answered itself costs no credit).

use std::sync::Arc;

use super::{Entry, Sink};
use crate::call::Ending;
use crate::ledger::{Ledger, LedgerRow, Outcome};

pub struct LedgerSink {
    ledger: Ledger,
}

impl LedgerSink {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

impl Sink for LedgerSink {
    fn record(&self, entry: &Entry<'_>) {
        let record = entry.record;
        let outcome = match record.ending {
            Ending::Answered => return,
            Ending::Complete => Outcome::Complete,
            Ending::Cut => Outcome::Cut,
            Ending::Failed => Outcome::Error,
        };
        // The dropped-rows counter is brought up to date by each `/metrics` scrape.
        self.ledger.record(LedgerRow {
            ts_ms: crate::calendar::now_ms(),
            request_id: record.request_id.to_string(),
            client: Arc::clone(entry.client),
            method: record.method.to_string(),
            route: Arc::clone(entry.route),
            account: record.route.as_ref().and_then(|r| r.account.clone()),
            status: record.status.as_u16(),
            credits_used: entry.credits.used,
            balance: entry.credits.balance,
            cached: entry.said.cached,
            duration_ms: entry.total.as_millis() as u64,
            outcome,
        });
    }
}
