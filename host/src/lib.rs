//! weir: a streaming host for edge gateways.
//!
//! weir subscribes to sensor data, runs user operators compiled to WebAssembly components, and
//! forwards what it computes upstream. See `ARCHITECTURE.md` for the map.

pub mod admin;
pub mod batch;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod enrich;
pub mod fleet;
pub mod fsutil;
pub mod keys;
pub mod mqtt;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod window;
