//! Sending the TLS reports (RFC 8460) that are due: for each reporting period the ledger has
//! closed, one report per domain that publishes an `_smtp._tls` record, to its `mailto:`
//! addresses, DKIM-signed and queued like any other message.
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
use crate::tlsrpt::report::{Submitter, message};
use crate::tlsrpt::{Ledger, Period};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, RcptParams};
use mail_auth::mta_sts::ReportUri;

/// The latest a day's reports wait after the day ends (each host its own delay in it, so
/// that not every sender reports at midnight).
const SPREAD: u64 = 3600;

/// What became of one domain's report.
enum Sent {
    /// Queued under this id, to these addresses.
    Queued(String, Vec<Mailbox>),
    /// Nobody to send it to (no record, or only addresses we do not send to).
    Nobody(&'static str),
}

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
            for domain in period.domains.keys() {
                if !cfg.reports.tls_reports {
                    ledger.done(period.start, domain);
                    continue;
                }
                self.report_domain(&cfg, ledger, (&period, domain), now)
                    .await;
            }
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
            TlsRptLookup::None => return ledger.done(period.start, domain),
            TlsRptLookup::Failed(e) => {
                return tracing::debug!(domain, error = %e, "_smtp._tls lookup failed; tried again later");
            }
        };
        match self.send_tls_report(cfg, (period, domain), &rua, now).await {
            Ok(Sent::Queued(id, to)) => {
                let to: Vec<String> = to.iter().map(Mailbox::to_string).collect();
                let policies = &period.domains[domain];
                let ok: u64 = policies
                    .iter()
                    .map(|p| p.summary.total_success as u64)
                    .sum();
                let failed: u64 = policies
                    .iter()
                    .map(|p| p.summary.total_failure as u64)
                    .sum();
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
            Err(e) => {
                tracing::warn!(domain, error = %e, "TLS report not queued; tried again later")
            }
        }
    }

    /// Writes, signs and queues `domain`'s report for `period` to the `mailto:` addresses of
    /// `rua` (`https:` ones are not sent to).
    async fn send_tls_report(
        &self,
        cfg: &Config,
        (period, domain): (&Period, &str),
        rua: &[ReportUri],
        now: u64,
    ) -> Result<Sent, super::NotifyError> {
        let to = mailto(rua);
        if to.is_empty() {
            return Ok(Sent::Nobody(
                "its _smtp._tls record names only https: addresses",
            ));
        }
        let from = cfg.tls_reports_from();
        let Ok(sender) = Mailbox::parse(&from, false) else {
            return Ok(Sent::Nobody(
                "no valid sender address (set [reports] tls_reports_from)",
            ));
        };
        let submitter_domain = sender.domain().as_str().to_string();
        let s = Submitter {
            organization: &submitter_domain,
            from: &from,
            domain: &submitter_domain,
        };
        let id = self.ids.next(now);
        let report_id = format!("{id}.{domain}@{}", cfg.hostname);
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
        Ok(Sent::Queued(id, to))
    }
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
