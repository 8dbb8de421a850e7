//! SMTP on the wire, without I/O: commands, replies, the DATA receiver, and the server and
//! client state machines built on them.
//!
//! Not responsible for: sockets, TLS, timers or policy; drivers in the `backstop` crate own those.

pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod server;
