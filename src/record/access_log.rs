//! The access log: one line per call with one schema, whether it was forwarded ("request") or
//! refused by the gateway ("request refused"); a field the call has no value for is left out.

use super::{Entry, Sink};

pub struct AccessLog;

impl Sink for AccessLog {
    fn record(&self, entry: &Entry<'_>) {
        let record = entry.record;
        let upstream = record.upstream.as_ref();
        macro_rules! line {
            ($message:literal) => {
                tracing::info!(
                    request_id = &*record.request_id,
                    client = &**entry.client,
                    method = record.method.as_str(),
                    route = &**entry.route,
                    account = record.route.as_ref().and_then(|r| r.account.as_deref()),
                    status = record.status.as_u16(),
                    code = record.refusal.map(|r| r.code),
                    credits_used = entry.credits.used,
                    credit_balance = entry.credits.balance,
                    cached = entry.said.cached,
                    upstream_ms = upstream.map(|a| a.upstream_ms),
                    total_ms = entry.total.as_millis() as u64,
                    outcome = record.ending.as_str(),
                    bytes = upstream.map_or(0, |a| a.bytes),
                    implausible_credits = entry.credits.implausible.as_deref(),
                    $message
                )
            };
        }
        if record.forwarded {
            line!("request");
        } else {
            line!("request refused");
        }
    }
}
