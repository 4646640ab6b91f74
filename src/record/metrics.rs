//! The Prometheus series of every call: requests and their duration, credits (known or not),
//! the upstream's rate limit, and 429s by the limit that refused.

use super::{Entry, Sink};
use crate::call::Ending;
use crate::metrics::Metrics;

pub struct MetricsSink {
    metrics: Metrics,
}

impl MetricsSink {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl Sink for MetricsSink {
    fn record(&self, entry: &Entry<'_>) {
        let (record, client, route) = (entry.record, entry.client, entry.route);
        if let Some(scope) = record.refusal.and_then(|r| r.scope) {
            self.metrics.rate_limited(client, scope);
        }
        if record.forwarded {
            let said = entry.said;
            if said.limit_minute.is_some() || said.remaining_minute.is_some() {
                self.metrics
                    .upstream_rate_limit(said.limit_minute, said.remaining_minute);
            }
            let status = record.status;
            match entry.credits.used {
                Some(used) => self.metrics.credits(client, route, used),
                None if record.ending != Ending::Failed
                    && !status.is_client_error()
                    && !status.is_server_error() =>
                {
                    self.metrics.credits_unknown(client, route);
                }
                None => {}
            }
        }
        self.metrics
            .request(client, route, record.status.as_u16(), entry.total);
    }
}
