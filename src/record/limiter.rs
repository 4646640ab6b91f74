//! Limiter feedback: what a forwarded call's answer said about the upstream's limits, when its
//! head did not already tell the limiter everything (then the rate-limit layer fed it at once).

use super::{Entry, Sink};
use crate::limiter::Limiter;

pub struct LimiterFeedback {
    limiter: Limiter,
}

impl LimiterFeedback {
    pub fn new(limiter: Limiter) -> Self {
        Self { limiter }
    }
}

impl Sink for LimiterFeedback {
    fn record(&self, entry: &Entry<'_>) {
        let record = entry.record;
        if let (Some(ticket), false, Some(_)) = (record.ticket, record.limiter_fed, record.upstream)
        {
            self.limiter.observe(ticket, entry.said.limiter_report());
        }
    }
}
