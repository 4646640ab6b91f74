//! The sandbox upstream (SPEC §9): a faithful local stand-in for OnlyFansAPI's Fansly
//! tracking-link routes. (Being written.)

/// What the sandbox is started with.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// The one upstream key it accepts (`SANDBOX_API_KEY`, default `sandbox-key`).
    pub api_key: String,
    /// Its per-minute request limit (`limit_minute`); past it, 429 until the minute turns.
    pub requests_per_minute: u32,
    /// The credit balance it starts with.
    pub starting_balance: u64,
}
