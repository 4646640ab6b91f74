//! Where every call ends up: the [`Recorder`] takes each call's [`Record`] once (see `crate::call`)
//! and hands it, with the credit figures taken from it, to small sinks, one concern each:
//!
//! - [`limiter::LimiterFeedback`]: what the answer said about the upstream's limits, when its
//!   head did not already say it all;
//! - [`budget::BudgetSettlement`]: the client's reservation settled at the real cost;
//! - [`metrics::MetricsSink`]: the Prometheus series;
//! - [`ledger::LedgerSink`]: the durable row of a forwarded call;
//! - [`access_log::AccessLog`]: the one access line, with one schema for every call.
//!
//! The balance watch ([`balance::BalanceWatch`]) runs first: it decides which credit figures are
//! real (a charge is checked against the balance seen before it) and so what the others see.

pub mod access_log;
pub mod balance;
pub mod budget;
pub mod ledger;
pub mod limiter;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use crate::budget::Budgets;
use crate::call::{Ending, Record, RecordSink};
use crate::ledger::Ledger;
use crate::limiter::Limiter;
use crate::metrics::{Metrics, UNKNOWN};
use crate::upstream::facts::UpstreamFacts;
use crate::upstream::figures::AcceptedCredits;

use balance::BalanceWatch;

/// A record with what the recorder worked out from it, as each sink sees it.
pub struct Entry<'a> {
    pub record: &'a Record,
    /// The client's id, or `unknown` before authentication.
    pub client: &'a Arc<str>,
    /// The route template, or `unknown` before routing.
    pub route: &'a Arc<str>,
    /// The credit figures that are real.
    pub credits: AcceptedCredits,
    /// What the answer said, its head first, its body's `_meta` for what the head lacked.
    pub said: UpstreamFacts,
    /// From arrival to the end of the answer.
    pub total: Duration,
}

/// One concern's share of every record.
pub trait Sink: Send + Sync {
    fn record(&self, entry: &Entry<'_>);
}

/// Takes every record; see the module docs.
pub struct Recorder {
    balance: BalanceWatch,
    sinks: Vec<Box<dyn Sink>>,
    /// Off (`serve --no-metering`, benchmarks): forwarded calls are not recorded at all, only the
    /// gateway's own refusals, to measure what recording costs.
    metering: bool,
}

impl Recorder {
    pub fn new(balance: BalanceWatch, sinks: Vec<Box<dyn Sink>>, metering: bool) -> Self {
        Self {
            balance,
            sinks,
            metering,
        }
    }

    /// The gateway's recorder: every sink, in the order above.
    pub fn gateway(
        metrics: Metrics,
        ledger: Option<Ledger>,
        limiter: Limiter,
        budgets: Budgets,
        low_balance_warning: u64,
        metering: bool,
    ) -> Self {
        let mut sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(limiter::LimiterFeedback::new(limiter)),
            Box::new(budget::BudgetSettlement::new(budgets, metrics.clone())),
            Box::new(metrics::MetricsSink::new(metrics.clone())),
        ];
        if let Some(ledger) = ledger {
            sinks.push(Box::new(ledger::LedgerSink::new(ledger)));
        }
        sinks.push(Box::new(access_log::AccessLog));
        let balance = BalanceWatch::new(metrics, low_balance_warning);
        Self::new(balance, sinks, metering)
    }
}

impl RecordSink for Recorder {
    fn record(&self, record: Record) {
        // A local answer that refused nothing (`/healthz` on the client listener) is no call.
        if !record.forwarded && record.refusal.is_none() {
            return;
        }
        if record.forwarded && !self.metering {
            return;
        }
        let (headers, meta) = record
            .upstream
            .map_or_else(Default::default, |answer| (answer.headers, answer.meta));
        let credits = self.balance.take(meta, headers);
        let entry = Entry {
            client: record.client.as_ref().map_or(&UNKNOWN, |c| &c.0),
            route: record.route.as_ref().map_or(&UNKNOWN, |r| &r.template),
            credits,
            said: headers.or(meta),
            total: record.received_at.elapsed(),
            record: &record,
        };
        for sink in &self.sinks {
            sink.record(&entry);
        }
    }
}

impl Entry<'_> {
    /// A forwarded call that was answered, its whole answer delivered or not (not a failure).
    pub fn answered_upstream(&self) -> bool {
        matches!(self.record.ending, Ending::Complete | Ending::Cut)
            && self.record.upstream.is_some()
    }
}
