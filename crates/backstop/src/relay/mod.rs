//! Handing accepted mail on: in-session SMTP relay to an internal server, and local Maildir
//! delivery.
//!
//! Responsible for: the next hop's transaction while the client's is open (so the client's
//! answer is the next hop's answer), mapping every next-hop refusal to our own fixed reply
//! texts, and atomic, fsync'd Maildir delivery.
//! Not responsible for: choosing the next hop (policy) or SMTP sequencing with the client
//! (the session). Shared by the inbound side today and queue delivery later.

pub mod maildir;
pub mod smtp;

use std::time::Duration;

/// Connections kept open to one next hop at most (one per concurrent relayed transaction).
pub const MAX_RELAY_CONNECTIONS: usize = 512;
/// Longest wait for a next hop (connect, or any one reply). The client waits meanwhile; RFC
/// 5321 §4.5.3.2 gives it 5 minutes for most replies and 10 for the final one.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(120);
