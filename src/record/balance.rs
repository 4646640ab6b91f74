//! The balance watch: which of an answer's credit figures are real ([`accept_credits`]: a charge
//! is checked against the balance seen before it), the balance gauge, a WARN once when the balance
//! falls below `credits.low_balance_warning`, and credits that left the balance without a call
//! through the gateway (`ofapi_gateway_unattributed_credits_total`).

use std::sync::Mutex;

use crate::metrics::Metrics;
use crate::upstream::facts::UpstreamFacts;
use crate::upstream::figures::{accept_credits, AcceptedCredits, ReportedCredits};

pub struct BalanceWatch {
    metrics: Metrics,
    /// WARN once when the balance falls below this.
    low_balance_warning: u64,
    state: Mutex<Seen>,
}

/// What the answers so far said of the balance.
#[derive(Default)]
struct Seen {
    /// The balance the latest answer reported.
    last: Option<u64>,
    /// Whether the low-balance warning was given (it is given again after a top-up).
    warned: bool,
}

impl BalanceWatch {
    pub fn new(metrics: Metrics, low_balance_warning: u64) -> Self {
        Self {
            metrics,
            low_balance_warning,
            state: Mutex::new(Seen::default()),
        }
    }

    /// The answer's credit figures that are real, the watch brought up to date with them.
    pub fn take(&self, meta: UpstreamFacts, headers: UpstreamFacts) -> AcceptedCredits {
        let mut seen = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let reported = |facts: UpstreamFacts| ReportedCredits {
            used: facts.credits_used,
            balance: facts.balance,
        };
        let credits = accept_credits(reported(meta), reported(headers), seen.last);
        if let Some(balance) = credits.balance {
            self.watch(&mut seen, balance, credits.used.unwrap_or(0));
        }
        credits
    }

    fn watch(&self, seen: &mut Seen, balance: u64, used: u64) {
        self.metrics.balance(balance);
        if let Some(last) = seen.last {
            // Between two answers the balance should drop by exactly this answer's charge;
            // more means someone spent elsewhere. (A rise is a top-up, or answers that
            // crossed: start over from here.)
            let expected = last.saturating_sub(used);
            if balance < expected {
                self.metrics.unattributed_credits(expected - balance);
            }
        }
        if balance >= self.low_balance_warning {
            seen.warned = false;
        } else if !seen.warned {
            seen.warned = true;
            tracing::warn!(
                credit_balance = balance,
                threshold = self.low_balance_warning,
                "credit balance is below credits.low_balance_warning"
            );
        }
        seen.last = Some(balance);
    }
}
