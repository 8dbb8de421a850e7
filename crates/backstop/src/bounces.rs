//! `backstop bounce parse`: runs the bounce parser over files, a Maildir, an mbox or standard
//! input, and prints one JSON object per failed recipient (one per message when it names none).
//!
//! Responsible for: finding the messages (a file; `-` for stdin; a Maildir's `cur` and `new`;
//! any other directory's files; an mbox split at its `From ` lines) and the JSON shape.
//! Not responsible for: parsing (`backstop_proto::bounce`).

use backstop_proto::bounce::{Bounce, Kind, parse};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ReadError {
    path: String,
    source: std::io::Error,
}

/// One message and where it came from (`file`, `file#3` for the third of an mbox).
pub struct Source {
    /// Where.
    pub name: String,
    /// The raw message.
    pub raw: Vec<u8>,
}

/// The messages of `arg`: `-` (stdin), a file (an mbox when it starts with `From `), or a
/// directory (a Maildir's `cur` and `new`, or every file in it).
pub fn messages(arg: &str) -> Result<Vec<Source>, ReadError> {
    let err = |source| ReadError {
        path: arg.to_string(),
        source,
    };
    if arg == "-" {
        let mut raw = Vec::new();
        std::io::stdin().read_to_end(&mut raw).map_err(err)?;
        return Ok(split(arg, raw));
    }
    let path = Path::new(arg);
    if !path.is_dir() {
        return Ok(split(arg, std::fs::read(path).map_err(err)?));
    }
    let maildir = path.join("cur").is_dir() || path.join("new").is_dir();
    let dirs: Vec<PathBuf> = if maildir {
        vec![path.join("cur"), path.join("new")]
    } else {
        vec![path.to_path_buf()]
    };
    let mut files = Vec::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for e in std::fs::read_dir(d).map_err(err)? {
            let p = e.map_err(err)?.path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let raw = std::fs::read(&f).map_err(|source| ReadError {
            path: f.display().to_string(),
            source,
        })?;
        out.extend(split(&f.display().to_string(), raw));
    }
    Ok(out)
}

/// An mbox (starts with `From `) split into its messages; anything else is one message.
fn split(name: &str, raw: Vec<u8>) -> Vec<Source> {
    if !raw.starts_with(b"From ") {
        return vec![Source {
            name: name.to_string(),
            raw,
        }];
    }
    let mut out = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue; // the separator line is not part of the message
        }
        // mboxrd: ">From " quoted once more than in the message
        let unquoted = match line.strip_prefix(b">") {
            Some(rest)
                if rest.trim_ascii_start().starts_with(b"From ") || rest.starts_with(b">") =>
            {
                rest
            }
            Some(_) | None => line,
        };
        current.extend_from_slice(unquoted);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, raw)| Source {
            name: format!("{name}#{}", i + 1),
            raw,
        })
        .collect()
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Bounce => "bounce",
        Kind::Delivery => "delivery",
        Kind::AutoReply => "auto-reply",
        Kind::Feedback => "feedback",
        Kind::Challenge => "challenge",
        Kind::Other => "other",
    }
}

/// The JSON objects for one parsed message.
pub fn objects(source: &str, b: &Bounce) -> Vec<Value> {
    let o = &b.original;
    let original = json!({
        "message_id": o.message_id, "from": o.from, "envelope_sender": o.envelope_sender,
        "date": o.date, "subject": o.subject, "received": o.received,
    });
    if b.failures.is_empty() && b.notices.is_empty() {
        return vec![
            json!({ "source": source, "kind": kind_name(b.kind), "recipient": null, "original": original }),
        ];
    }
    b.failures
        .iter()
        .chain(&b.notices)
        .map(|f| {
            json!({
                "source": source, "kind": kind_name(b.kind), "recipient": f.recipient,
                "status": f.status, "reply_code": f.reply_code, "reason": f.reason.as_str(),
                "hard": f.hard, "permanent": f.permanent, "action": f.action, "remote_mta": f.remote_mta,
                "diagnostic": f.diagnostic, "original": original,
            })
        })
        .collect()
}

/// Parses every message of every argument and prints the objects, one per line.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for arg in args {
        for m in messages(arg)? {
            for o in objects(&m.name, &parse(&m.raw)) {
                writeln!(out, "{o}")?;
            }
        }
    }
    Ok(())
}
