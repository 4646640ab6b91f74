//! # ofapi-gateway
//!
//! A self-hosted, authenticating reverse proxy in front of OnlyFansAPI: one shared upstream key
//! behind revocable per-client gateway keys, one limiter that keeps the key under the upstream's
//! rate limit, and a record of every call's credits.
//!
//! A request goes through one Tower stack (see [`stack`]), one layer per concern, from the
//! client listener to the pooled upstream client.
//!
//! ## Layout
//! - [`cli`]: the command line and each subcommand's glue.
//! - [`config`]: the TOML file, validated once into a typed `Config`; secrets as newtypes.
//! - [`server`]: listeners, TLS, the accept loop, graceful shutdown, reload.
//! - [`stack`]: the order of the layers, and why.
//! - [`call`]: one call's context, filled in by the layers and recorded once when it is over.
//! - [`record`]: where every call's record goes: limiter feedback, budget settlement, metrics,
//!   ledger, access log, balance watch.
//! - [`layers`]: one concern per file (request id, record, rescue, route, authenticate, authorize,
//!   body limit, validate, rate limit, upstream auth, meter).
//! - [`limiter`]: the shared upstream budget, per-client limits and the fair queue.
//! - [`log_format`]: the JSON log line, written by hand.
//! - [`log_output`]: log lines to stdout in batches, off the request path.
//! - [`metrics`]: the Prometheus metric families behind the admin `/metrics`.
//! - [`upstream`]: each serving thread's pool of upstream connections (h2 or HTTP/1.1), and
//!   the header hygiene of a proxy.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/usage`).
//! - [`ledger`]: the credit ledger (SQLite, one batching writer thread) and the usage reports.
//! - [`sandbox`]: a faithful local stand-in for the upstream.
//! - [`budget`]: per-client credit budgets, with reservations so concurrency cannot overshoot.
//! - [`calendar`]: UTC day and month arithmetic.
//! - [`error`]: gateway errors and their SPEC §5 status, code and JSON body.
//! - [`body`]: the one body type and error alias of the stack.

pub mod admin;
pub mod body;
pub mod budget;
pub mod calendar;
pub mod call;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod layers;
pub mod ledger;
pub mod limiter;
pub mod log_format;
pub mod log_output;
pub mod metrics;
pub mod record;
pub mod sandbox;
pub mod server;
pub mod stack;
pub mod upstream;
