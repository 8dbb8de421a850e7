//! One RFC 8460 aggregate report as a message: the JSON report (gzip-compressed) of a domain's
//! sessions in a period, in a `multipart/report; report-type="tlsrpt"` message with the
//! fields and file name the RFC names.
//!
//! Responsible for: the report's content and headers, with time and ids passed in. Not
//! responsible for: what was counted (the ledger), where it goes, signing or sending it
//! (`notify`).

use super::Period;
use mail_auth::report::tlsrpt::{DateRange, TlsReport};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};

/// Who reports: our organisation's name and the address reports come from.
pub struct Submitter<'a> {
    /// `organization-name` (our domain).
    pub organization: &'a str,
    /// The report's `From:` and `contact-info`.
    pub from: &'a str,
    /// `TLS-Report-Submitter` (the From address's domain).
    pub domain: &'a str,
}

/// The report of `domain`'s sessions in `period`, as JSON.
pub fn json(s: &Submitter, period: &Period, domain: &str, report_id: &str) -> Option<String> {
    let policies = period.domains.get(domain)?.clone();
    let start = period.start as i64;
    let end = period.end.unwrap_or(period.start) as i64;
    let report = TlsReport {
        organization_name: Some(s.organization.to_string()),
        date_range: DateRange::from_timestamps(start, end),
        contact_info: Some(s.from.to_string()),
        report_id: report_id.to_string(),
        policies,
    };
    Some(report.to_json())
}

/// The report message (CRLF line ends) of `domain`'s sessions in `period` to `to`, written at
/// `now` with message id `<message_id>` and report id `report_id`.
pub fn message(
    s: &Submitter,
    (period, domain): (&Period, &str),
    to: &[String],
    (report_id, message_id): (&str, &str),
    now: u64,
) -> std::io::Result<Vec<u8>> {
    let Some(json) = json(s, period, domain, report_id) else {
        return Ok(Vec::new());
    };
    let gz = gzip(json.as_bytes())?;
    let (start, end) = (period.start, period.end.unwrap_or(period.start));
    let file = format!("{}!{domain}!{start}!{end}.json.gz", s.domain);
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {}.\r\n\r\n\
         Report Domain: {domain}\r\nSubmitter: {}\r\nReport-ID: {report_id}\r\n\
         Period: {} to {}\r\n",
        s.organization,
        s.domain,
        backstop_proto::datetime::rfc5322(start),
        backstop_proto::datetime::rfc5322(end),
    );
    let to: Vec<Address> = to
        .iter()
        .map(|a| Address::new_address(None::<&str>, a.as_str()))
        .collect();
    MessageBuilder::new()
        .from(Address::new_address(None::<&str>, s.from))
        .to(Address::new_list(to))
        .date(now as i64)
        .message_id(message_id)
        .subject(format!(
            "Report Domain: {domain} Submitter: {} Report-ID: <{report_id}>",
            s.domain
        ))
        .header("TLS-Report-Domain", HeaderType::Text(domain.into()))
        .header("TLS-Report-Submitter", HeaderType::Text(s.domain.into()))
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            BodyPart::Multipart(vec![
                MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into())),
                MimePart::new(
                    ContentType::new("application/tlsrpt+gzip"),
                    BodyPart::Binary(gz.into()),
                )
                .attachment(file),
            ]),
        ))
        .write_to_vec()
}

/// `bytes` gzip-compressed (the report's form in both transports).
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use mail_auth::flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let mut e = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::default());
    e.write_all(bytes)?;
    e.finish()
}
