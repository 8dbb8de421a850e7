//! One decision per recipient, whichever front end asks: the SMTP listener, the Postfix policy
//! service and `backstop verify` all ask the same [`Ladder`] and get the same [`Verdict`]; and
//! the envelope checks of a message at its end ([`message`]).
//!
//! Responsible for: the order of the checks on a recipient (tarpit, BATV tag, bounce rate,
//! verification, harvest count and cut-off, outbound limit), the fixed reply of every answer
//! backstop gives to RCPT by itself ([`Reason::reply`]; never the internal server's words), and
//! what each check records (events, counts), or nothing at all in a dry run.
//! Not responsible for: SMTP sequencing (the session), relaying an accepted recipient to its
//! next hop and the transaction it joins (the front end), or whether an address is a user (the
//! verifier, [`crate::policy`]).

pub mod message;
pub mod rcpt;
#[cfg(test)]
mod tests;

pub use rcpt::{Facts, Ladder, Reason, Tally, Verdict, Verified};
