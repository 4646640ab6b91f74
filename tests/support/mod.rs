//! The integration tests' harness, one file per kind of helper. `use support::*` brings all but
//! the process and services helpers, which are used by name (`support::process::...`).
//!
//! Nothing here sleeps to synchronize: a request held upstream is observed with
//! [`MockUpstream::wait_for_count`], and released with a [`Gate`].

// Each test binary uses a different part of the harness; a harness may panic on any failure.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod bodies;
pub mod clients;
pub mod gateway;
pub mod ledger;
pub mod mock_upstream;
pub mod process;
pub mod raw_http;
pub mod services;
pub mod sync;
pub mod tls;

pub use self::bodies::*;
pub use self::clients::*;
pub use self::gateway::*;
pub use self::ledger::*;
pub use self::mock_upstream::*;
pub use self::raw_http::*;
pub use self::sync::*;
pub use self::tls::*;
