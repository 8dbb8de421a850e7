//! backstop: the effectful half of the gateway (see ARCHITECTURE.md for the map).

pub mod clock;
pub mod config;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod upstream;
