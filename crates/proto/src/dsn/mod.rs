//! Delivery status notifications ("bounce reports", RFC 3464) built from values passed in.
//!
//! Responsible for: the complete report message — top-level header (RFC 5322, `Auto-Submitted`
//! of RFC 3834), `multipart/report` (RFC 6522) with a human-readable notification, the
//! machine-readable `message/delivery-status` (or `message/global-delivery-status` of RFC 6533
//! for SMTPUTF8 mail to non-ASCII recipients) and the original's headers (`text/rfc822-headers`,
//! or `message/global-headers`); sanitising every value that came from a peer so that it cannot
//! add a header field, end a part or pass the line length limit.
//! Not responsible for: deciding when a report is due or to whom (the gateway's notify), the
//! clock, ids and the MIME boundary (passed in), or queueing the report.
//!
//! Never returns the original's body: RET=FULL is treated as RET=HDRS (RFC 3461 §4.3 asks for
//! the full content only with SHOULD), so a report cannot carry a payload back to a forged
//! sender.
//!
//! Field values follow RFC 3461 §6.3 and RFC 3464 §2. ENVID and ORCPT are written decoded from
//! xtext: xtext is the encoding of the SMTP parameter, the report carries the value itself
//! (RFC 3461 §4.4 limits ENVID to printable ASCII before encoding because of the DSN format;
//! Postfix writes both decoded). An address of type `utf-8` is written as utf-8-addr-xtext
//! (`\x{HEX}`) in the 7-bit `message/delivery-status` and as plain UTF-8 in
//! `message/global-delivery-status` (RFC 6533 §3); an `rfc822` address that is not ASCII is
//! written as a `utf-8` address. Per-message and per-recipient fields are in the order of the
//! RFC 3464 grammar (§2.2, §2.3), extension fields (`X-Backstop-Queue-ID`) last.

mod original;
mod text;

use crate::address::Mailbox;
use crate::datetime::rfc5322;
use crate::smtp::command::Orcpt;
use crate::smtp::reply::Enhanced;
pub use original::{header_section, message_id};
use text::{Folder, clean, utf8_addr_xtext};

/// RFC 3464 Action values we produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Given up: the message will not be delivered to this recipient.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Delivered to the recipient's mailbox (or a server that reports further).
    Delivered,
    /// Handed to a server that does not report success (no DSN support).
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// Everything a report says; every string may come from a peer and is sanitised.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// Our host name, e.g. `gw.example.test` (`Reporting-MTA: dns; ...`).
    pub reporting_mta: &'a str,
    /// The header From address, e.g. `MAILER-DAEMON@gw.example.test`.
    pub postmaster: &'a str,
    /// The original's envelope sender: the report goes there.
    pub to: &'a Mailbox,
    /// Unix time the report is written (`Date:`).
    pub date: u64,
    /// The report's Message-ID without `<>`, e.g. `ABC.1@gw.example.test`.
    pub message_id: &'a str,
    /// The MIME boundary. Characters outside RFC 2046 `bcharsnospace` are dropped and it is cut
    /// to 70; an empty result falls back to a fixed boundary (see [`build`]).
    pub boundary: &'a str,
    /// The message reported on.
    pub original: Original<'a>,
    /// One entry per recipient reported on, in this order.
    pub recipients: &'a [Recipient<'a>],
}

/// The message a report is about.
#[derive(Clone, Copy, Debug)]
pub struct Original<'a> {
    /// Our queue id of the original (`X-Backstop-Queue-ID:`, like Postfix's
    /// `X-Postfix-Queue-ID`).
    pub queue_id: &'a str,
    /// MAIL ENVID, already xtext-decoded (`Original-Envelope-Id:`).
    pub envid: Option<&'a str>,
    /// Unix time the original arrived (`Arrival-Date:`).
    pub arrival: u64,
    /// The original's header section as received: CRLF lines, with or without the empty line
    /// that ends it, possibly with UTF-8, possibly huge (capped at 64 KiB). Bytes after the
    /// first empty line are ignored, so passing the whole message is safe.
    pub headers: &'a [u8],
    /// The original was SMTPUTF8 mail.
    pub smtputf8: bool,
}

/// What happened to one recipient.
#[derive(Clone, Copy, Debug)]
pub struct Recipient<'a> {
    /// The envelope recipient (`Final-Recipient:`).
    pub final_recipient: &'a Mailbox,
    /// ORCPT, decoded (`Original-Recipient:`); absent without ORCPT (RFC 3461 §6.3 d).
    pub original: Option<&'a Orcpt>,
    /// `Action:`
    pub action: Action,
    /// `Status:`
    pub status: Enhanced,
    /// Host name that answered (`Remote-MTA: dns; NAME`).
    pub remote_mta: Option<&'a str>,
    /// The remote SMTP reply text (`Diagnostic-Code: smtp; ...`). Without it, a failed or
    /// delayed recipient gets `Diagnostic-Code: X-Backstop; {reason}` (as Postfix does).
    pub diagnostic: Option<&'a str>,
    /// Short human text for the notification part, e.g. `host mx.b.test said: 550 ...`.
    pub reason: &'a str,
    /// `Last-Attempt-Date:`
    pub last_attempt: Option<u64>,
    /// `Will-Retry-Until:`; written for [`Action::Delayed`] only (RFC 3464 §2.3.9: it MUST
    /// NOT appear in other reports).
    pub will_retry_until: Option<u64>,
}

/// Choices made once per report.
struct Ctx {
    boundary: String,
    /// UTF-8 may appear in header values and the notification (SMTPUTF8 mail).
    utf8: bool,
    /// Part 2 is `message/global-delivery-status`.
    global: bool,
}

impl Ctx {
    fn new(r: &Report<'_>) -> Ctx {
        let finals_ascii = r.recipients.iter().all(|x| x.final_recipient.is_ascii());
        let utf8 = r.original.smtputf8 || !r.to.is_ascii() || !finals_ascii;
        let orcpts_ascii = r
            .recipients
            .iter()
            .all(|x| x.original.is_none_or(|o| o.addr.is_ascii()));
        Ctx {
            boundary: boundary(r.boundary),
            utf8,
            global: utf8 && !(finals_ascii && orcpts_ascii),
        }
    }
}

/// Used when the caller's boundary has no usable character. Collisions with the returned
/// headers are handled by [`original::attach`] whatever the boundary.
const FALLBACK_BOUNDARY: &str = "=_backstop-report";

/// The boundary restricted to RFC 2046 `bcharsnospace`, at most 70 characters.
fn boundary(b: &str) -> String {
    let b: String = b
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(*c))
        .take(70)
        .collect();
    if b.is_empty() {
        FALLBACK_BOUNDARY.to_string()
    } else {
        b
    }
}

/// The complete report message (header + body), CRLF line ends, ready to queue. Never panics.
///
/// Every line is at most 998 bytes; header fields are folded at 78 where there is white space.
/// The report is 7-bit unless the original was SMTPUTF8 mail or its returned headers hold
/// 8-bit bytes; then the parts that need it (and the top level) say `8bit`.
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let ctx = Ctx::new(r);
    let attached = original::attach(r.original.headers, &ctx.boundary);
    let notice = guard(notification(r, &ctx, attached.cut), &ctx.boundary);
    let notice_8bit = !notice.is_ascii();
    let status = delivery_status(r, &ctx);
    let headers_8bit = attached.eight_bit || r.original.smtputf8;
    let any_8bit = notice_8bit || ctx.global || headers_8bit;

    let mut out = top_header(r, &ctx, any_8bit).into_bytes();
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n");
    let (ctype, cte) = match notice_8bit {
        true => ("text/plain; charset=utf-8", "8bit"),
        false => ("text/plain; charset=us-ascii", "7bit"),
    };
    part(
        &mut out,
        &ctx,
        ["Notification", ctype, cte],
        notice.as_bytes(),
    );
    let (ctype, cte) = match ctx.global {
        true => ("message/global-delivery-status", "8bit"),
        false => ("message/delivery-status", "7bit"),
    };
    part(
        &mut out,
        &ctx,
        ["Delivery report", ctype, cte],
        status.as_bytes(),
    );
    let ctype = match r.original.smtputf8 {
        true => "message/global-headers",
        false => "text/rfc822-headers",
    };
    let cte = if headers_8bit { "8bit" } else { "7bit" };
    let description = match r.recipients.iter().any(|x| undelivered(x.action)) {
        true => "Undelivered Message Headers",
        false => "Message Headers",
    };
    part(&mut out, &ctx, [description, ctype, cte], &attached.bytes);
    out.extend_from_slice(format!("\r\n--{}--\r\n", ctx.boundary).as_bytes());
    out
}

fn undelivered(a: Action) -> bool {
    matches!(a, Action::Failed | Action::Delayed)
}

/// One body part: delimiter, `[description, content type, transfer encoding]`, content.
/// The content is CRLF lines; the CRLF before the next delimiter belongs to it (RFC 2046
/// §5.1.1), so one empty line separates them.
fn part(out: &mut Vec<u8>, ctx: &Ctx, [description, ctype, cte]: [&str; 3], content: &[u8]) {
    out.extend_from_slice(format!("\r\n--{}\r\n", ctx.boundary).as_bytes());
    out.extend_from_slice(format!("Content-Description: {description}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Type: {ctype}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n\r\n").as_bytes());
    out.extend_from_slice(content);
}

/// The report's own header section (without the empty line that ends it).
fn top_header(r: &Report<'_>, ctx: &Ctx, eight_bit: bool) -> String {
    let any = |a: Action| r.recipients.iter().any(|x| x.action == a);
    let subject = if any(Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let mut h = format!("Date: {}\r\n", rfc5322(r.date));
    let from = format!("Mail Delivery System <{}>", clean(r.postmaster, ctx.utf8));
    h += &Folder::field("From").words(&from).finish();
    let to = format!("<{}>", clean(&r.to.to_string(), ctx.utf8));
    h += &Folder::field("To").words(&to).finish();
    h += &format!("Subject: {subject}\r\n");
    h += &Folder::field("Message-ID")
        .words(&format!("<{}>", id_text(r.message_id)))
        .finish();
    if let Some(id) = message_id(r.original.headers) {
        h += &Folder::field("In-Reply-To")
            .words(&format!("<{id}>"))
            .finish();
        h += &Folder::field("References")
            .words(&format!("<{id}>"))
            .finish();
    }
    h += "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n";
    h += &Folder::field("Content-Type")
        .words("multipart/report; report-type=delivery-status;")
        .words(&format!("boundary=\"{}\"", ctx.boundary))
        .finish();
    let cte = if eight_bit { "8bit" } else { "7bit" };
    h + &format!("Content-Transfer-Encoding: {cte}\r\n")
}

/// A msg-id we were given, restricted to printable ASCII without `<` and `>`.
fn id_text(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '<' && *c != '>')
        .collect()
}

/// The first part: what happened and why, for people.
fn notification(r: &Report<'_>, ctx: &Ctx, cut: bool) -> String {
    let host = clean(r.reporting_mta, false);
    // Not Postfix's exact "This is the mail system at host": with that line and Postfix's
    // Subject, sisimai (4.25) takes the report for Postfix's and gives every recipient the
    // last recipient's text; without it, it reads the delivery-status part (RFC 3464).
    let mut t = paragraph(&format!("This is the backstop mail system at host {host}."));
    t += &paragraph(intro(r.recipients));
    for action in [
        Action::Failed,
        Action::Delayed,
        Action::Delivered,
        Action::Relayed,
    ] {
        t += &group(r.recipients, action, ctx);
    }
    t += &paragraph(
        "Only the headers of your message are attached: this mail system never returns \
         the body of a message, whatever the sender asked for.",
    );
    if cut {
        t += &paragraph("The headers were cut at 64 KiB; the rest are not attached.");
    }
    t += &paragraph(
        "For further assistance, please contact your postmaster and include this report.",
    );
    t.truncate(t.len() - 2); // no empty line before the delimiter's own CRLF
    t
}

/// Indents any line of running text that starts with the delimiter (only a host name from the
/// configuration could put one there) so that it cannot end the part.
fn guard(text: String, boundary: &str) -> String {
    let delimiter = format!("--{boundary}");
    let text = text.replace(&format!("\r\n{delimiter}"), &format!("\r\n {delimiter}"));
    match text.starts_with(&delimiter) {
        true => format!(" {text}"),
        false => text,
    }
}

/// Text wrapped at 78, then an empty line.
fn paragraph(s: &str) -> String {
    Folder::text("").words(s).finish() + "\r\n"
}

fn intro(recipients: &[Recipient<'_>]) -> &'static str {
    let any = |a: Action| recipients.iter().any(|x| x.action == a);
    if any(Action::Failed) {
        "Your message could not be delivered to one or more recipients. The mail system \
         has given up on them; the reasons are listed below."
    } else if any(Action::Delayed) {
        "Your message could not be delivered yet to one or more recipients. This is only a \
         warning: the mail system is still trying, you do not need to send the message again."
    } else {
        "Your message was delivered to the recipients listed below. Where it was relayed to a \
         system that does not report delivery, you may still hear about errors from there."
    }
}

/// The recipients with `action`: a heading, then `<addr>: reason` per recipient.
fn group(recipients: &[Recipient<'_>], action: Action, ctx: &Ctx) -> String {
    let mut t = String::new();
    for x in recipients.iter().filter(|x| x.action == action) {
        if t.is_empty() {
            t = paragraph(match action {
                Action::Failed => "Delivery failed permanently for:",
                Action::Delayed => "Delivery is delayed for:",
                Action::Delivered => "Delivered to:",
                Action::Relayed => "Relayed to (no further notifications expected from there):",
            });
        }
        let mut line = format!(
            "<{}>: {}",
            clean(&x.final_recipient.to_string(), ctx.utf8),
            clean(x.reason, ctx.utf8)
        );
        if let (Action::Delayed, Some(until)) = (action, x.will_retry_until) {
            line += &format!(" (still trying until {})", rfc5322(until));
        }
        t += &(Folder::text("    ").words(&line).finish() + "\r\n");
    }
    t
}

/// The second part: per-message fields, then one block per recipient (RFC 3464 §2.1).
fn delivery_status(r: &Report<'_>, ctx: &Ctx) -> String {
    let o = &r.original;
    let mut s = String::new();
    if let Some(envid) = o.envid {
        s += &field("Original-Envelope-Id", &clean(envid, ctx.global));
    }
    s += &field(
        "Reporting-MTA",
        &format!("dns; {}", clean(r.reporting_mta, false)),
    );
    s += &format!("Arrival-Date: {}\r\n", rfc5322(o.arrival));
    s += &field("X-Backstop-Queue-ID", &clean(o.queue_id, false));
    for x in r.recipients {
        s += "\r\n";
        s += &recipient_fields(x, ctx);
    }
    s
}

fn field(name: &str, value: &str) -> String {
    Folder::field(name).words(value).finish()
}

/// The per-recipient fields in RFC 3464 §2.3 order.
fn recipient_fields(x: &Recipient<'_>, ctx: &Ctx) -> String {
    let mut s = String::new();
    if let Some(o) = x.original {
        s += &field("Original-Recipient", &address(&o.addr_type, &o.addr, ctx));
    }
    let fin = x.final_recipient.to_string();
    s += &field("Final-Recipient", &address("rfc822", &fin, ctx));
    s += &format!("Action: {}\r\nStatus: {}\r\n", x.action.as_str(), x.status);
    if let Some(mta) = x.remote_mta {
        s += &field("Remote-MTA", &format!("dns; {}", clean(mta, ctx.global)));
    }
    match x.diagnostic {
        Some(d) => {
            s += &field(
                "Diagnostic-Code",
                &format!("smtp; {}", clean(d, ctx.global)),
            )
        }
        None if undelivered(x.action) => {
            let reason = clean(x.reason, ctx.global);
            s += &field("Diagnostic-Code", &format!("X-Backstop; {reason}"));
        }
        None => {}
    }
    if let Some(t) = x.last_attempt {
        s += &format!("Last-Attempt-Date: {}\r\n", rfc5322(t));
    }
    if let (Action::Delayed, Some(t)) = (x.action, x.will_retry_until) {
        s += &format!("Will-Retry-Until: {}\r\n", rfc5322(t));
    }
    s
}

/// `address-type; generic-address` (RFC 3464 §2.3.1, §2.3.2) for this part's character set.
fn address(addr_type: &str, addr: &str, ctx: &Ctx) -> String {
    let ty: String = addr_type
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let addr = clean(addr, true);
    let ty = if ty.is_empty() {
        "unknown".to_string()
    } else {
        ty
    };
    match (ty == "utf-8" || !addr.is_ascii(), ctx.global) {
        (false, _) => format!("{ty}; {addr}"),
        (true, true) => format!("utf-8; {addr}"),
        (true, false) => format!("utf-8; {}", utf8_addr_xtext(&addr)),
    }
}
