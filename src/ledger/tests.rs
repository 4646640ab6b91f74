//! Tests of the writer: durability, batching, back-pressure, failure and recovery, retention.
