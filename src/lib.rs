//! ofapi-gateway (skeleton)
pub mod config;
pub mod sandbox;
