//! The one place that decides what a delivery attempt's outcome means for a recipient:
//! delivered, temporary (try again later) or permanent (give up), and when to try again.
//!
//! Responsible for: an exhaustive classification of every outcome (no catch-all arm, so a new
//! kind of outcome cannot be classified by accident) and the retry schedule.
//! Not responsible for: producing outcomes (the SMTP and Maildir paths do) or storing statuses.

use super::mx::DnsFailure;
use crate::upstream::UpstreamError;
use backstop_proto::smtp::reply::{Enhanced, Reply, ReplyClass};
use std::sync::Arc;
use std::time::Duration;

/// What happened to one recipient in one attempt. Cheap to clone: one failure of a connection
/// is every recipient's outcome on it.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The next hop answered for this recipient (its RCPT refusal, or the message's final
    /// answer, or a MAIL/DATA refusal that applies to it).
    Reply(Reply, Arc<Remote>),
    /// Written to a Maildir.
    Stored(String),
    /// The destination could not be resolved.
    Dns(DnsFailure),
    /// No connection to any host of the destination, or it broke during the transaction.
    Upstream(Arc<UpstreamError>),
    /// A local failure: the spool could not be read, a Maildir could not be written.
    Local(String),
}

/// The server that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its host name (Remote-MTA).
    pub host: String,
    /// It announced DSN: the recipients' NOTIFY/ORCPT went on with the message, so success
    /// reports are its to send.
    pub dsn: bool,
}

/// What a delivery report says about an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// RFC 3463 status.
    pub status: Enhanced,
    /// The host that answered (Remote-MTA).
    pub remote: Option<String>,
    /// The remote SMTP reply on one line (Diagnostic-Code: smtp).
    pub smtp: Option<String>,
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
        Outcome::Reply(r, _) => by_reply(r),
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
            | UpstreamError::Tls(..)
            // a policy forbids plaintext: deferred, never sent in clear
            | UpstreamError::TlsNotOffered(..)
            | UpstreamError::TlsNotVerified(..) => Class::Temporary,
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
            Outcome::Reply(r, _) => one_line(r),
            Outcome::Stored(s) | Outcome::Local(s) => s.clone(),
            Outcome::Dns(d) => d.detail(),
            Outcome::Upstream(e) => e.to_string(),
        }
    }
}

/// The report fields for an outcome. Exhaustive like [`classify`]; the status comes from the
/// remote reply when it has one, else from what went wrong (RFC 3463: 5.4.4 unable to route,
/// 5.1.10 null MX (RFC 7505), 4.4.3 DNS failure, 4.4.1 no answer, 4.4.2 connection dropped,
/// 4.7.4 TLS required and not offered, 4.7.5 TLS failed or not verified).
pub fn diagnose(o: &Outcome) -> Diagnosis {
    let plain = |status| Diagnosis {
        status,
        remote: None,
        smtp: None,
    };
    match o {
        Outcome::Reply(r, remote) => Diagnosis {
            status: status_of(r),
            remote: Some(remote.host.clone()),
            smtp: Some(one_line(r)),
        },
        Outcome::Stored(_) => plain(Enhanced::new(2, 0, 0)),
        Outcome::Dns(DnsFailure::NoSuchDomain(_)) | Outcome::Dns(DnsFailure::NoAddress(_)) => {
            plain(Enhanced::new(5, 4, 4))
        }
        Outcome::Dns(DnsFailure::NullMx(_)) => plain(Enhanced::new(5, 1, 10)),
        Outcome::Dns(DnsFailure::Temporary(_)) => plain(Enhanced::new(4, 4, 3)),
        Outcome::Upstream(e) => match &**e {
            UpstreamError::Refused(target, r) => Diagnosis {
                status: status_of(r),
                remote: Some(host_of(target)),
                smtp: Some(one_line(r)),
            },
            UpstreamError::Connect(..) => plain(Enhanced::new(4, 4, 1)),
            UpstreamError::Timeout(_) | UpstreamError::Io(..) | UpstreamError::Closed(_) => {
                plain(Enhanced::new(4, 4, 2))
            }
            UpstreamError::Protocol(..) => plain(Enhanced::new(4, 5, 0)),
            UpstreamError::Tls(..) | UpstreamError::TlsNotVerified(..) => {
                plain(Enhanced::new(4, 7, 5))
            }
            // RFC 3463 X.7.4: security features not supported
            UpstreamError::TlsNotOffered(..) => plain(Enhanced::new(4, 7, 4)),
        },
        Outcome::Local(_) => plain(Enhanced::new(4, 3, 0)),
    }
}

/// A reply's enhanced status, or the generic one of its class.
fn status_of(r: &Reply) -> Enhanced {
    r.enhanced.unwrap_or(match r.class() {
        ReplyClass::Success => Enhanced::new(2, 0, 0),
        ReplyClass::Intermediate | ReplyClass::Transient => Enhanced::new(4, 0, 0),
        ReplyClass::Permanent => Enhanced::new(5, 0, 0),
    })
}

fn one_line(r: &Reply) -> String {
    r.to_string().trim_end().replace("\r\n", " ")
}

/// The host name in a connection label (`name[ip]:port` or `host:port`).
pub fn host_of(target: &str) -> String {
    let end = target
        .find('[')
        .or_else(|| target.rfind(':'))
        .unwrap_or(target.len());
    target[..end].to_string()
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

    fn reply(code: u16) -> Outcome {
        Outcome::Reply(
            Reply::new(code, Enhanced::new((code / 100) as u8, 0, 0), "x"),
            Arc::new(Remote {
                host: "mx.example.test".into(),
                dsn: false,
            }),
        )
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
    fn every_outcome_has_report_fields() {
        let d = diagnose(&Outcome::Reply(
            Reply::new(550, Enhanced::new(5, 1, 1), "<a@b.test>: unknown"),
            Arc::new(Remote {
                host: "mx.b.test".into(),
                dsn: true,
            }),
        ));
        assert_eq!(d.status, Enhanced::new(5, 1, 1));
        assert_eq!(d.remote.as_deref(), Some("mx.b.test"));
        assert_eq!(d.smtp.as_deref(), Some("550 5.1.1 <a@b.test>: unknown"));
        let plain = diagnose(&Outcome::Reply(
            Reply::plain(554, "no"),
            Arc::new(Remote {
                host: "h".into(),
                dsn: false,
            }),
        ));
        assert_eq!(plain.status, Enhanced::new(5, 0, 0));
        let nx = diagnose(&Outcome::Dns(DnsFailure::NoSuchDomain("x.test".into())));
        assert_eq!(
            (nx.status, nx.remote, nx.smtp),
            (Enhanced::new(5, 4, 4), None, None)
        );
        let null = diagnose(&Outcome::Dns(DnsFailure::NullMx("x.test".into())));
        assert_eq!(null.status, Enhanced::new(5, 1, 10));
        let greet = UpstreamError::Refused(
            "mx.x.test[127.0.0.1]:25".into(),
            Reply::plain(554, "go away"),
        );
        let g = diagnose(&Outcome::Upstream(Arc::new(greet)));
        assert_eq!(g.remote.as_deref(), Some("mx.x.test"));
        assert_eq!(host_of("relay.test:2525"), "relay.test");
    }

    #[test]
    fn backoff_doubles_from_five_minutes_up_to_an_hour() {
        let (min, max) = (Duration::from_secs(300), Duration::from_secs(3600));
        let secs: Vec<u64> = (1..=6).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(backoff(1000, min, max).as_secs(), 3600);
    }
}
