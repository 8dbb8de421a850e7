//! Amazon SES notifications: the JSON that SES (directly, or wrapped in an SNS notification)
//! mails about a message it sent: `Bounce`, `Complaint` or `Delivery`.
//!
//! Responsible for: finding the notification in a message's text and turning it into a
//! [`Bounce`](super::Bounce): the bounced recipients with their status, action and diagnostic, the complained
//! recipients as feedback, the delivered ones as delivered. Not responsible for: general JSON
//! (only the few fields SES writes are read, by a small scanner that understands strings and
//! nesting), reasons (the parser classifies the diagnostics like any other).
//!
//! Pure, never panics, linear in the text.

use super::fields::{address, one_line, status_in};
use super::{Failure, Kind, Original, Reason};

/// The notification in `text`, if it holds one: its kind, its recipients (bounced, complained
/// or delivered) and the original it is about.
pub fn read(text: &str) -> Option<(Kind, Vec<Failure>, Original)> {
    if !text.contains("notificationType") {
        return None;
    }
    // inside an SNS notification the SES JSON is a string: unescape it once
    let unescaped;
    let json = if text.contains("\\\"notificationType\\\"") {
        unescaped = text.replace("\\\"", "\"").replace("\\\\", "\\");
        unescaped.as_str()
    } else {
        text
    };
    let (kind, failures) = match string_after(json, "notificationType")? {
        "Bounce" => (Kind::Bounce, bounced(json)),
        "Complaint" => (Kind::Feedback, complained(json)),
        "Delivery" => (Kind::Delivery, delivered(json)),
        _ => return None,
    };
    let mut original = Original::default();
    if let Some(mail) = object_after(json, "mail") {
        original.envelope_sender = string_after(mail, "source").and_then(address);
        original.subject = string_after(mail, "subject").map(str::to_string);
        original.message_id = string_after(mail, "messageId").map(str::to_string);
        original.from = array_after(mail, "from")
            .and_then(|a| strings(a).next())
            .and_then(address);
    }
    Some((kind, failures, original))
}

fn bounced(json: &str) -> Vec<Failure> {
    let Some(bounce) = object_after(json, "bounce") else {
        return Vec::new();
    };
    let remote = string_after(bounce, "reportingMTA").map(|m| {
        let m = m.split_once(';').map_or(m, |(_, v)| v);
        m.trim().to_string()
    });
    objects(array_after(bounce, "bouncedRecipients").unwrap_or(""))
        .filter_map(|r| {
            let diagnostic = string_after(r, "diagnosticCode").unwrap_or("");
            let diagnostic = diagnostic.split_once(';').map_or(diagnostic, |(_, d)| d);
            Some(Failure {
                recipient: address(string_after(r, "emailAddress")?)?,
                status: string_after(r, "status").and_then(status_in),
                action: string_after(r, "action").map(str::to_ascii_lowercase),
                diagnostic: one_line(diagnostic, 1000),
                remote_mta: remote.clone(),
                ..Failure::default()
            })
        })
        .collect()
}

fn complained(json: &str) -> Vec<Failure> {
    let Some(complaint) = object_after(json, "complaint") else {
        return Vec::new();
    };
    let kind = string_after(complaint, "complaintFeedbackType").unwrap_or("abuse");
    objects(array_after(complaint, "complainedRecipients").unwrap_or(""))
        .filter_map(|r| {
            Some(Failure {
                recipient: address(string_after(r, "emailAddress")?)?,
                reason: Reason::Feedback,
                diagnostic: kind.to_string(),
                ..Failure::default()
            })
        })
        .collect()
}

fn delivered(json: &str) -> Vec<Failure> {
    let Some(delivery) = object_after(json, "delivery") else {
        return Vec::new();
    };
    let response = string_after(delivery, "smtpResponse").unwrap_or("");
    let remote = string_after(delivery, "remoteMtaIp").map(str::to_string);
    strings(array_after(delivery, "recipients").unwrap_or(""))
        .filter_map(address)
        .map(|recipient| Failure {
            recipient,
            status: status_in(response),
            action: Some("delivered".into()),
            diagnostic: one_line(response, 1000),
            remote_mta: remote.clone(),
            reason: Reason::Delivered,
            ..Failure::default()
        })
        .collect()
}

/// Where the value of the first `"key":` starts (after the colon and spaces).
fn value_at(json: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(at) = json[from..].find(&quoted) {
        let after = from + at + quoted.len();
        let rest = json[after..].trim_start();
        if let Some(value) = rest.strip_prefix(':') {
            return Some(json.len() - value.trim_start().len());
        }
        from = after;
    }
    None
}

/// The string value of the first `"key"` (escapes left as they are).
fn string_after<'j>(json: &'j str, key: &str) -> Option<&'j str> {
    let rest = json[value_at(json, key)?..].strip_prefix('"')?;
    Some(&rest[..string_end(rest)?])
}

/// The `[...]` value of the first `"key"`, brackets excluded.
fn array_after<'j>(json: &'j str, key: &str) -> Option<&'j str> {
    enclosed(&json[value_at(json, key)?..], '[', ']')
}

/// The `{...}` value of the first `"key"`, braces excluded.
fn object_after<'j>(json: &'j str, key: &str) -> Option<&'j str> {
    enclosed(&json[value_at(json, key)?..], '{', '}')
}

/// The byte offset of the quote closing a string whose opening quote precedes `s`.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// The inside of the bracketed value `s` starts with, nesting and strings respected.
fn enclosed(s: &str, open: char, close: char) -> Option<&str> {
    let body = s.strip_prefix(open)?;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ if in_string => {}
            '[' | '{' => depth += 1,
            ']' | '}' if depth == 0 => return (c == close).then(|| &body[..i]),
            ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The `{...}` items of an array's inside.
fn objects(array: &str) -> impl Iterator<Item = &str> {
    let mut rest = array;
    std::iter::from_fn(move || {
        let at = rest.find('{')?;
        let inner = enclosed(&rest[at..], '{', '}')?;
        rest = &rest[at + inner.len() + 2..];
        Some(inner)
    })
}

/// The string items of an array's inside.
fn strings(array: &str) -> impl Iterator<Item = &str> {
    let mut rest = array;
    std::iter::from_fn(move || {
        let at = rest.find('"')?;
        let body = &rest[at + 1..];
        let end = string_end(body)?;
        rest = &body[end + 1..];
        Some(&body[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_notification_names_each_recipient() {
        let json = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Permanent",
            "bouncedRecipients":[{"emailAddress":"gone@example.test","action":"failed",
            "status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"},
            {"emailAddress":"x{y@example.test"}],"reportingMTA":"dsn; a1.example.test"},
            "mail":{"source":"me@example.test","messageId":"0101-abc"}}"#;
        let (kind, failures, original) = read(json).unwrap();
        assert_eq!(kind, Kind::Bounce);
        assert_eq!(failures.len(), 2);
        let f = &failures[0];
        assert_eq!(f.recipient, "gone@example.test");
        assert_eq!(f.status.as_deref(), Some("5.1.1"));
        assert_eq!(f.diagnostic, "550 5.1.1 user unknown");
        assert_eq!(f.remote_mta.as_deref(), Some("a1.example.test"));
        assert_eq!(original.envelope_sender.as_deref(), Some("me@example.test"));
    }

    #[test]
    fn complaints_and_deliveries_and_broken_json() {
        let sns = r#"{"Type":"Notification","Message":"{\"notificationType\":\"Complaint\",\"complaint\":{\"complainedRecipients\":[{\"emailAddress\":\"c@example.test\"}],\"complaintFeedbackType\":\"abuse\"}}"}"#;
        let (kind, complained, _) = read(sns).unwrap();
        assert_eq!(kind, Kind::Feedback);
        assert_eq!(complained[0].recipient, "c@example.test");
        let d = r#"{"notificationType":"Delivery","delivery":{"recipients":["ok@example.test"],"smtpResponse":"250 2.6.0 Message received"}}"#;
        let (_, delivered, _) = read(d).unwrap();
        assert_eq!(delivered[0].reason, Reason::Delivered);
        assert_eq!(delivered[0].status.as_deref(), Some("2.6.0"));
        for broken in [
            r#"{"notificationType":"Bounce","bounce":{"bouncedRecipients":[{"#,
            "notificationType",
            r#""notificationType":"#,
        ] {
            let _ = read(broken);
        }
    }
}
