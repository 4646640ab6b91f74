//! Prometheus metrics (SPEC §7), served as text on the admin listener's `/metrics`.
//! (Interface; the families are being filled in.)

use std::time::Duration;

/// A cheap handle on the gateway's metric families.
#[derive(Clone, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Self {
        Self {}
    }
    /// One finished request (forwarded or answered by the gateway).
    pub fn request(&self, _client: &str, _route: &str, _status: u16, _duration: Duration) {}
    /// Credits charged for a forwarded call.
    pub fn credits(&self, _client: &str, _route: &str, _used: u64) {}
    /// A forwarded call whose response said nothing about credits.
    pub fn credits_unknown(&self, _client: &str, _route: &str) {}
    /// The latest credit balance the upstream reported.
    pub fn balance(&self, _balance: u64) {}
    /// The upstream's latest reported per-minute limit and remaining requests.
    pub fn upstream_rate_limit(&self, _limit: Option<u32>, _remaining: Option<u32>) {}
    /// A request refused with 429 (`scope`: `client` or `upstream`).
    pub fn rate_limited(&self, _client: &str, _scope: &str) {}
    /// Credits that left the balance without being charged to a call through the gateway.
    pub fn unattributed_credits(&self, _credits: u64) {}
    /// A client's budget period: spent so far and what is left (`None`: no budget).
    pub fn budget(&self, _client: &str, _spent: u64, _remaining: Option<u64>) {}
    /// Ledger rows dropped so far (a total, not an increment).
    pub fn ledger_dropped(&self, _total: u64) {}
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        String::new()
    }
}
