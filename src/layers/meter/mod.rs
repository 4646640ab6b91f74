//! The response meter: reads the upstream's `_meta` (credits, cache, rate limits) out of a JSON
//! response body as it streams to the client, without buffering or delaying it, and points
//! `_pagination.next_page` links at the gateway instead of the upstream.
//!
//! `layer` is the Tower layer that writes each forwarded call's answer into its `Call`. `scan` holds the incremental tokenizer and the `_meta` scanner, `rewrite` the `next_page`
//! rewriter built on the same tokenizer, and `body` the `MeteredBody` that wires both into the
//! stack's body type and reports once when the body ends.

pub mod body;
mod layer;
pub mod rewrite;
pub mod scan;

pub use layer::{MeterLayer, MeterSettings};
