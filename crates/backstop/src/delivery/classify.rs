//! The one place that decides what a delivery attempt's outcome means for a recipient:
//! delivered, temporary (try again later) or permanent (give up), and when to try again.
//!
//! Responsible for: an exhaustive classification of every outcome (no catch-all arm, so a new
//! kind of outcome cannot be classified by accident) and the retry schedule.
//! Not responsible for: producing outcomes (the SMTP and Maildir paths do) or storing statuses.

use super::mx::DnsFailure;
use crate::upstream::UpstreamError;
use backstop_proto::smtp::reply::{Reply, ReplyClass};
use std::sync::Arc;
use std::time::Duration;

/// What happened to one recipient in one attempt. Cheap to clone: one failure of a connection
/// is every recipient's outcome on it.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The next hop answered for this recipient (its RCPT refusal, or the message's final
    /// answer, or a MAIL/DATA refusal that applies to it).
    Reply(Reply),
    /// Written to a Maildir.
    Stored(String),
    /// The destination could not be resolved.
    Dns(DnsFailure),
    /// No connection to any host of the destination, or it broke during the transaction.
    Upstream(Arc<UpstreamError>),
    /// A local failure: the spool could not be read, a Maildir could not be written.
    Local(String),
}

/// What an outcome means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Done.
    Delivered,
    /// Try again later.
    Temporary,
    /// Give up: the recipient fails.
    Permanent,
}

/// Classifies an outcome. Exhaustive by design.
pub fn classify(o: &Outcome) -> Class {
    match o {
        Outcome::Reply(r) => by_reply(r),
        Outcome::Stored(_) => Class::Delivered,
        Outcome::Dns(DnsFailure::NoSuchDomain(_))
        | Outcome::Dns(DnsFailure::NullMx(_))
        | Outcome::Dns(DnsFailure::NoAddress(_)) => Class::Permanent,
        Outcome::Dns(DnsFailure::Temporary(_)) => Class::Temporary,
        Outcome::Upstream(e) => match &**e {
            // a session refused with 5xx by the last host tried (every other one failed first)
            UpstreamError::Refused(_, r) => match r.class() {
                ReplyClass::Permanent => Class::Permanent,
                ReplyClass::Success | ReplyClass::Intermediate | ReplyClass::Transient => {
                    Class::Temporary
                }
            },
            UpstreamError::Connect(..)
            | UpstreamError::Timeout(_)
            | UpstreamError::Io(..)
            | UpstreamError::Closed(_)
            | UpstreamError::Protocol(..)
            | UpstreamError::Tls(..) => Class::Temporary,
        },
        Outcome::Local(_) => Class::Temporary,
    }
}

fn by_reply(r: &Reply) -> Class {
    match r.class() {
        ReplyClass::Success => Class::Delivered,
        // a 3xx where a final answer belongs is a confused server: try again later
        ReplyClass::Intermediate | ReplyClass::Transient => Class::Temporary,
        ReplyClass::Permanent => Class::Permanent,
    }
}

impl Outcome {
    /// Text for the operator and the recipient's status.
    pub fn detail(&self) -> String {
        match self {
            Outcome::Reply(r) => r.to_string().replace("\r\n", " "),
            Outcome::Stored(s) | Outcome::Local(s) => s.clone(),
            Outcome::Dns(d) => d.detail(),
            Outcome::Upstream(e) => e.to_string(),
        }
    }
}

/// Delay before attempt `attempts + 1`, after `attempts` (≥ 1) failed ones: `min` doubled per
/// attempt, at most `max` (Postfix: 5 min first, at most 4000 s apart).
pub fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    min.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_proto::smtp::reply::Enhanced;

    fn reply(code: u16) -> Outcome {
        Outcome::Reply(Reply::new(
            code,
            Enhanced::new((code / 100) as u8, 0, 0),
            "x",
        ))
    }

    #[test]
    fn every_outcome_has_one_class() {
        assert_eq!(classify(&reply(250)), Class::Delivered);
        assert_eq!(classify(&reply(451)), Class::Temporary);
        assert_eq!(classify(&reply(452)), Class::Temporary);
        assert_eq!(classify(&reply(354)), Class::Temporary);
        assert_eq!(classify(&reply(550)), Class::Permanent);
        assert_eq!(classify(&reply(554)), Class::Permanent);
        assert_eq!(classify(&Outcome::Stored("f".into())), Class::Delivered);
        let d = |f| classify(&Outcome::Dns(f));
        assert_eq!(
            d(DnsFailure::NoSuchDomain("x.test".into())),
            Class::Permanent
        );
        assert_eq!(d(DnsFailure::NullMx("x.test".into())), Class::Permanent);
        assert_eq!(d(DnsFailure::NoAddress("x.test".into())), Class::Permanent);
        assert_eq!(
            d(DnsFailure::Temporary("servfail".into())),
            Class::Temporary
        );
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let u = |e| classify(&Outcome::Upstream(Arc::new(e)));
        assert_eq!(
            u(UpstreamError::Connect("h".into(), io())),
            Class::Temporary
        );
        assert_eq!(u(UpstreamError::Timeout("h".into())), Class::Temporary);
        assert_eq!(u(UpstreamError::Closed("h".into())), Class::Temporary);
        assert_eq!(
            u(UpstreamError::Tls("h".into(), "x".into())),
            Class::Temporary
        );
        let greet = |c| UpstreamError::Refused("h".into(), Reply::plain(c, "no"));
        assert_eq!(u(greet(554)), Class::Permanent);
        assert_eq!(u(greet(421)), Class::Temporary);
        assert_eq!(classify(&Outcome::Local("disk".into())), Class::Temporary);
    }

    #[test]
    fn backoff_doubles_from_five_minutes_up_to_an_hour() {
        let (min, max) = (Duration::from_secs(300), Duration::from_secs(3600));
        let secs: Vec<u64> = (1..=6).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(backoff(1000, min, max).as_secs(), 3600);
    }
}
