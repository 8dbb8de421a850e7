//! Quarantined bounces: one file per message under `state_dir/quarantine`, written durably
//! before the client hears `250`, listed by `backstop quarantine list`.
//!
//! A file is the message as received, preceded by `X-Backstop-Quarantine-*` fields that give
//! its envelope, when it arrived and why it was kept; an administrator can read it with any
//! mail tool or hand it on with `sendmail -t` after removing those fields.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The quarantine's directory in `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// One quarantined message, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The queue id it was given.
    pub id: String,
    /// When it arrived (Unix seconds).
    pub arrived: u64,
    /// The envelope sender (`<>` for a bounce).
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// Why it was kept.
    pub reasons: String,
    /// Its file.
    pub path: PathBuf,
}

/// What to keep.
pub struct Kept {
    /// The id.
    pub id: String,
    /// Arrival time.
    pub arrived: u64,
    /// Envelope sender, as written in MAIL FROM (with brackets: `<>`).
    pub from: String,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The evidence.
    pub reasons: String,
    /// Our `Received:` line.
    pub trace: String,
    /// The message (read a piece at a time).
    pub body: crate::content::Content,
}

/// Writes `kept` durably (temporary file, fsync, rename, fsync of the directory).
pub fn keep(dir: &Path, kept: &Kept) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.eml", kept.id));
    let tmp = dir.join(format!(".{}.tmp", kept.id));
    let mut f = std::fs::File::create(&tmp)?;
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    write!(
        f,
        "X-Backstop-Quarantine-Id: {}\r\nX-Backstop-Quarantine-Arrived: {}\r\n\
         X-Backstop-Quarantine-From: {}\r\nX-Backstop-Quarantine-To: {}\r\n\
         X-Backstop-Quarantine-Reasons: {}\r\n",
        kept.id,
        kept.arrived,
        one_line(&kept.from),
        one_line(&kept.to.join(", ")),
        one_line(&kept.reasons),
    )?;
    f.write_all(kept.trace.as_bytes())?;
    std::io::copy(&mut kept.body.reader(), &mut f)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Every quarantined message, oldest first; files that cannot be read are skipped.
pub fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Entry> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter_map(|p| read_entry(&p))
        .collect();
    out.sort_by(|a, b| (a.arrived, &a.id).cmp(&(b.arrived, &b.id)));
    Ok(out)
}

fn read_entry(path: &Path) -> Option<Entry> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(16 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    let field = |name: &str| {
        text.lines()
            .take_while(|l| l.starts_with("X-Backstop-Quarantine-"))
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(Entry {
        id: field("X-Backstop-Quarantine-Id:")?,
        arrived: field("X-Backstop-Quarantine-Arrived:")?.parse().ok()?,
        from: field("X-Backstop-Quarantine-From:")?,
        to: field("X-Backstop-Quarantine-To:")?
            .split(", ")
            .map(str::to_string)
            .collect(),
        reasons: field("X-Backstop-Quarantine-Reasons:")?,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_messages_are_listed_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let to = vec!["alice@example.test".to_string()];
        for (id, at) in [("B2", 200), ("A1", 100)] {
            keep(
                d.path(),
                &Kept {
                    id: id.into(),
                    arrived: at,
                    from: "<>".into(),
                    to: to.clone(),
                    reasons: "batv=missing,msgid=unknown,relay=foreign".into(),
                    trace: "Received: from x\r\n".into(),
                    body: crate::content::Content::of(vec![
                        b"Subject: bounce\r\n\r\nbody\r\n".to_vec(),
                    ]),
                },
            )
            .unwrap();
        }
        let l = list(d.path()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].id.as_str(), l[0].arrived), ("A1", 100));
        assert_eq!(l[0].from, "<>");
        assert_eq!(l[0].to, to);
        assert_eq!(l[0].reasons, "batv=missing,msgid=unknown,relay=foreign");
        let text = std::fs::read_to_string(&l[1].path).unwrap();
        assert!(text.ends_with("Received: from x\r\nSubject: bounce\r\n\r\nbody\r\n"));
        assert_eq!(list(&d.path().join("none")).unwrap(), vec![]);
    }
}
