//! Sending the TLS reports (RFC 8460) that are due: for each reporting period the ledger has
//! closed, one report per domain that publishes an `_smtp._tls` record: to its `mailto:`
//! addresses DKIM-signed and queued like any other message, to its `https:` addresses
//! POSTed (certificate verified).
//!
//! Responsible for: when a period's reports go (a while after the day ends, spread by host;
//! at once when an operator closed the period), the record lookup, the envelope (our
//! postmaster, never a null sender: receivers drop unauthenticated reports) and what the
//! ledger forgets afterwards. Not responsible for: counting sessions (`tlsrpt`), the report's
//! form (`tlsrpt::report`), delivering it (the queue).

use super::Notifier;
use crate::auth::TlsRptLookup;
use crate::config::Config;
use crate::queue::{NewMessage, Trust};
use crate::tlsrpt::report::{Submitter, gzip, json, message};
use crate::tlsrpt::{Ledger, Period};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, RcptParams};
use futures_util::StreamExt;
use mail_auth::mta_sts::ReportUri;

/// The latest a day's reports wait after the day ends (each host its own delay in it, so
/// that not every sender reports at midnight).
const SPREAD: u64 = 3600;

/// What became of one domain's report.
enum Sent {
    /// Queued under this id to the `mailto:` addresses, or accepted by the `https:` ones:
    /// where it went.
    To(String, Vec<String>),
    /// Nobody to send it to (no address we can use).
    Nobody(&'static str),
    /// Not sent: our sender address is not usable (the configuration's fault).
    NoSender(&'static str),
    /// Its only addresses (`https:`) did not take it now: why.
    NotYet(String),
}

/// Domains whose reports are looked up and sent side by side.
const AT_ONCE: usize = 16;

/// Longest wait for a report's HTTPS POST, each address.
const POST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Notifier {
    /// Sends the TLS reports that are due (see the module) and writes the ledger. Domains
    /// whose record cannot be looked up stay for the next sweep, for at most
    /// [`crate::tlsrpt::KEEP`].
    pub async fn tls_reports(&self, ledger: &Ledger) {
        let cfg = self.cfg();
        let now = self.clock.unix();
        ledger.roll(now);
        let lost = ledger.expire(now);
        if lost > 0 {
            tracing::warn!(
                domains = lost,
                "TLS reports given up: DNS did not answer for days"
            );
        }
        for period in ledger.closed() {
            let end = period.end.unwrap_or(period.start);
            let due = match end % 86_400 {
                0 => end + crc32fast::hash(cfg.hostname.as_bytes()) as u64 % SPREAD,
                _ => end,
            };
            if now < due {
                continue;
            }
            // a few domains at a time: a slow resolver delays the reports, not one another
            let domains = futures_util::stream::iter(period.domains.keys());
            domains
                .for_each_concurrent(AT_ONCE, |domain| async {
                    match cfg.reports.tls_reports {
                        true => {
                            self.report_domain(&cfg, ledger, (&period, domain), now)
                                .await
                        }
                        false => ledger.done(period.start, domain),
                    }
                })
                .await;
        }
        if let Err(e) = ledger.flush() {
            tracing::warn!(error = %e, "TLS report counts not written");
        }
    }

    /// Looks up where `domain` wants its report, sends it, and tells the ledger.
    async fn report_domain(
        &self,
        cfg: &Config,
        ledger: &Ledger,
        (period, domain): (&Period, &str),
        now: u64,
    ) {
        let rua = match self.auth.load().tls_rpt(domain).await {
            TlsRptLookup::Found(rua) => rua,
            TlsRptLookup::None => {
                tracing::debug!(domain, "no _smtp._tls record: no TLS report");
                return ledger.done(period.start, domain);
            }
            TlsRptLookup::Failed(e) => {
                return tracing::debug!(domain, error = %e, "_smtp._tls lookup failed; tried again later");
            }
        };
        match self.send_tls_report(cfg, (period, domain), &rua, now).await {
            Ok(Sent::To(id, to)) => {
                let (ok, failed) = period.totals(domain);
                tracing::info!(
                    target: "backstop::event", event = "tls_report_sent", id, domain,
                    to = to.join(", "), start = period.start, end = period.end,
                    successful = ok, failed
                );
                ledger.done(period.start, domain);
            }
            Ok(Sent::Nobody(why)) => {
                tracing::info!(domain, "no TLS report sent: {why}");
                ledger.done(period.start, domain);
            }
            Ok(Sent::NoSender(why)) => {
                tracing::warn!(domain, "no TLS report sent: {why}");
                ledger.done(period.start, domain);
            }
            Ok(Sent::NotYet(why)) => {
                tracing::info!(domain, error = %why, "TLS report not sent yet; tried again later");
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "TLS report not queued; tried again later")
            }
        }
    }

    /// Writes `domain`'s report for `period`, signs and queues it to the `mailto:` addresses
    /// of `rua`, and posts it to the `https:` ones.
    async fn send_tls_report(
        &self,
        cfg: &Config,
        (period, domain): (&Period, &str),
        rua: &[ReportUri],
        now: u64,
    ) -> Result<Sent, super::NotifyError> {
        let (to, urls) = (mailto(rua), https(rua));
        if to.is_empty() && urls.is_empty() {
            return Ok(Sent::Nobody(
                "its _smtp._tls record names no address we can use",
            ));
        }
        let (from, sender) = match sender(cfg) {
            Ok(m) => (m.to_string(), m),
            Err(why) => return Ok(Sent::NoSender(why)),
        };
        let submitter_domain = sender.domain().as_str().to_string();
        let s = Submitter {
            organization: &submitter_domain,
            from: &from,
            domain: &submitter_domain,
        };
        let id = self.ids.next(now);
        let report_id = format!("{id}.{domain}@{}", cfg.hostname);
        let mut went = Vec::new();
        if !to.is_empty() {
            let message_id = format!("{id}@{}", cfg.hostname);
            let addrs: Vec<String> = to.iter().map(Mailbox::to_string).collect();
            let text = message(&s, (period, domain), &addrs, (&report_id, &message_id), now)
                .map_err(super::NotifyError::Build)?;
            let text = self.signed(&id, text).await;
            self.spool
                .enqueue(NewMessage {
                    id: id.clone(),
                    arrived: now,
                    from: ReversePath::Mailbox(sender),
                    params: MailParams::default(),
                    rcpts: to
                        .iter()
                        .map(|m| (m.clone(), RcptParams::default()))
                        .collect(),
                    data: vec![text],
                    rest: None,
                    trust: Trust::no("a TLS report from this gateway"),
                })
                .await?;
            went = addrs;
        }
        let json = json(&s, period, domain, &report_id).unwrap_or_default();
        let body = gzip(json.as_bytes()).map_err(super::NotifyError::Build)?;
        let mut why = String::new();
        for url in &urls {
            match self.post_report(url, body.clone().into()).await {
                Ok(()) => went.push(url.clone()),
                Err(e) => {
                    tracing::warn!(domain, error = %e, "TLS report not posted");
                    why = e;
                }
            }
        }
        Ok(match went.is_empty() {
            true => Sent::NotYet(why),
            false => Sent::To(id, went),
        })
    }

    /// POSTs a report (gzip JSON) to `url` (RFC 8460 §5.4): any 2xx answer takes it.
    async fn post_report(&self, url: &str, body: bytes::Bytes) -> Result<(), String> {
        let Some(tls) = self.https.load_full() else {
            return Err("no HTTPS client".into());
        };
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut last = format!("{url}: {host} has no address");
        for ip in self.auth.load().addresses_of(host).await? {
            let request = crate::https::Request {
                method: hyper::Method::POST,
                path,
                content_type: Some("application/tlsrpt+gzip"),
                body: body.clone(),
            };
            let sent = crate::https::send(&tls, ((ip, port).into(), host), request, 64 * 1024);
            match tokio::time::timeout(POST_TIMEOUT, sent).await {
                Ok(Ok((status, _))) if status.is_success() => return Ok(()),
                Ok(Ok((status, _))) => last = format!("{url}: HTTP status {status}"),
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: no answer within {POST_TIMEOUT:?}"),
            }
        }
        Err(last)
    }
}

/// Who TLS reports come from (`[reports] tls_reports_from`, else postmaster at the host
/// name's domain), or why nobody can: not an address, or a host name without a domain
/// (nobody could answer or authenticate such a sender).
fn sender(cfg: &Config) -> Result<Mailbox, &'static str> {
    let Ok(m) = Mailbox::parse(&cfg.tls_reports_from(), false) else {
        return Err("no valid sender address (set [reports] tls_reports_from)");
    };
    match m.domain().as_str().contains('.') {
        true => Ok(m),
        false => Err(
            "the sender's domain is not a domain name (set hostname or [reports] \
             tls_reports_from)",
        ),
    }
}

/// The `https:` addresses of a `rua` list (at most 10).
fn https(rua: &[ReportUri]) -> Vec<String> {
    rua.iter()
        .filter_map(|u| match u {
            ReportUri::Http(url) => Some(url.trim().to_string()),
            ReportUri::Mail(_) => None,
        })
        .take(10)
        .collect()
}

/// The `mailto:` addresses of a `rua` list that are addresses (at most 10).
fn mailto(rua: &[ReportUri]) -> Vec<Mailbox> {
    rua.iter()
        .filter_map(|u| match u {
            ReportUri::Mail(a) => Mailbox::parse(a.trim(), false).ok(),
            ReportUri::Http(_) => None,
        })
        .take(10)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_need_a_sender_at_a_domain_name() {
        let dir = tempfile::tempdir().unwrap();
        let base = |hostname: &str, extra: &str| {
            let text = format!(
                "hostname = \"{hostname}\"\nstate_dir = \"var\"\n[[listen]]\naddr = \"127.0.0.1:2525\"\n\
                 [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:2526\"]\n\
                 next_hop = \"smtp:127.0.0.1:2526\"\n{extra}"
            );
            Config::from_toml(&text, dir.path()).unwrap()
        };
        let ok = sender(&base("mx.example.test", "")).unwrap();
        assert_eq!(ok.to_string(), "postmaster@example.test");
        let why = sender(&base("gateway", "")).unwrap_err();
        assert!(why.contains("not a domain name"), "{why}");
        let set = "[reports]\ntls_reports_from = \"tls@example.test\"\n";
        assert_eq!(
            sender(&base("gateway", set)).unwrap().to_string(),
            "tls@example.test"
        );
    }
}
