//! backstop: the effectful half of the gateway (see ARCHITECTURE.md for the map).

pub mod alert;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backscatter;
pub mod bounces;
pub mod cli;
pub mod clock;
pub mod config;
pub mod content;
pub mod control;
pub mod decide;
pub mod delivery;
pub mod dkim;
pub mod harvest;
pub mod health;
pub mod https;
pub mod ids;
pub mod inbound;
pub mod notify;
pub mod outbound;
pub mod policy;
pub mod private;
pub mod queue;
pub mod relay;
pub mod reputation;
pub mod senders;
pub mod status;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod tlsrpt;
pub mod upstream;
pub mod web;
