//! backstop-proto: everything in backstop that is deterministic.
//!
//! Responsible for: mail addresses, the SMTP wire format, the sans-IO SMTP server session and
//! client state machines that the gateway drives, Postfix's policy delegation protocol, the
//! milter protocol, delivery reports (RFC 3464 bounces) we write, reading the bounces others
//! write, and LDAP search filters (RFC 4515 escaping) for directory lookups.
//! Not responsible for: anything effectful. This crate has no async runtime, no sockets, no clock
//! reads and no randomness that is not passed in; peer input never panics and never yields a Rust
//! error, only replies and closes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod batv;
pub mod bounce;
pub mod datetime;
pub mod dsn;
pub mod ldap_filter;
pub mod milter;
pub mod policy;
pub mod smtp;
