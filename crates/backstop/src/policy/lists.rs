//! `list:FILE` recipient sources: one address a line (`user@domain`, or `@domain` for a whole
//! domain), `#` comments, re-read when the file changes. A Postfix lookup table works as it
//! is (`user@domain OK`: the value after the address is ignored, as `relay_recipient_maps`
//! ignores it), so an existing recipient map can be used without conversion.
//!
//! Responsible for: parsing list files with errors that name file and line, answering "is this
//! address listed?" without blocking, and reloading on change (a broken edit keeps the last
//! good contents and is reported).
//! Not responsible for: deciding what an unlisted address gets (the verifier does).

use backstop_proto::address::{Domain, Mailbox};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a list file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not an address.
    #[error("{path}:{line}: {text:?} is not an address or @domain: {why}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// Why.
        why: String,
    },
}

/// The parsed contents of a list file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListData {
    addresses: HashSet<String>,
    domains: HashSet<Domain>,
}

impl ListData {
    /// Parses list text; `path` is only for error messages.
    pub fn parse(text: &str, path: &Path) -> Result<ListData, ListError> {
        let mut data = ListData::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |why: String| ListError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
                why,
            };
            let mut words = line.split_whitespace();
            let key = words.next().unwrap_or(line);
            if let Some(value) = words.next() {
                refused_value(value).map_err(err)?;
            }
            let line = key;
            if let Some(d) = line.strip_prefix('@') {
                data.domains
                    .insert(Domain::parse(d, true).map_err(|e| err(e.to_string()))?);
            } else {
                let m = Mailbox::parse(line, true).map_err(|e| err(e.to_string()))?;
                data.addresses.insert(m.key());
            }
        }
        Ok(data)
    }

    /// True when the address or its whole domain is listed (case-insensitive).
    pub fn contains(&self, m: &Mailbox) -> bool {
        self.domains.contains(m.domain()) || self.addresses.contains(&m.key())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    /// True when the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Postfix table's value: anything means "valid" (as in `relay_recipient_maps`), except
/// access-map actions, which would mean the opposite of what the file says here.
fn refused_value(value: &str) -> Result<(), String> {
    let upper = value.to_ascii_uppercase();
    let action = ["REJECT", "DEFER", "DISCARD", "HOLD", "DUNNO"].contains(&upper.as_str())
        || upper.starts_with("DEFER_IF")
        || value.starts_with(['4', '5']);
    match action {
        true => Err(format!(
            "{value:?} is an access-map action; a list holds valid addresses only (the value \
             after an address, like OK, is ignored)"
        )),
        false => Ok(()),
    }
}

/// What identifies a version of the file on disk.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A list file and its current contents.
#[derive(Debug)]
pub struct ListFile {
    path: PathBuf,
    data: RwLock<Arc<ListData>>,
    stamp: Mutex<Stamp>,
}

impl ListFile {
    /// Loads the file; fails if it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<ListFile, ListError> {
        let st = stamp(path);
        let data = read(path)?;
        Ok(ListFile {
            path: path.to_path_buf(),
            data: RwLock::new(Arc::new(data)),
            stamp: Mutex::new(st),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current contents.
    pub fn data(&self) -> Arc<ListData> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the file if its modification time or size changed. Returns `Ok(true)` when new
    /// contents were loaded; on error the old contents stay in use.
    pub fn reload_if_changed(&self) -> Result<bool, ListError> {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now == *last {
            return Ok(false);
        }
        *last = now;
        let data = read(&self.path)?;
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(data);
        Ok(true)
    }
}

fn read(path: &Path) -> Result<ListData, ListError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ListData::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s, true).unwrap()
    }

    #[test]
    fn parse_and_lookup() {
        let d = ListData::parse(
            "# users\nAlice@Example.test\n  bob@example.test   # trailing comment\n\n@whole.test\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.contains(&mb("alice@example.test")));
        assert!(d.contains(&mb("ALICE@EXAMPLE.TEST")));
        assert!(d.contains(&mb("anyone@whole.test")));
        assert!(!d.contains(&mb("carol@example.test")));
    }

    #[test]
    fn a_postfix_recipient_map_is_read_as_it_is() {
        let d = ListData::parse(
            "# relay_recipient_maps\nalice@example.test OK\nbob@example.test\tx\n@whole.test   OK\n",
            Path::new("relay_recipients"),
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.contains(&mb("bob@example.test")));
        assert!(d.contains(&mb("anyone@whole.test")));
        let e = ListData::parse("carol@example.test REJECT\n", Path::new("access")).unwrap_err();
        assert!(e.to_string().contains("access-map action"), "{e}");
        let e = ListData::parse("carol@example.test 550 no\n", Path::new("access")).unwrap_err();
        assert!(e.to_string().starts_with("access:1:"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = ListData::parse("ok@example.test\nnot an address\n", Path::new("users.txt"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("users.txt:2: \"not an address\""),
            "{e}"
        );
    }

    #[test]
    fn reload_on_change_keeps_old_contents_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "a@example.test\n").unwrap();
        let l = ListFile::load(&p).unwrap();
        assert!(!l.reload_if_changed().unwrap());
        std::fs::write(&p, "a@example.test\nb@example.test\n").unwrap();
        assert!(l.reload_if_changed().unwrap());
        assert!(l.data().contains(&mb("b@example.test")));
        std::fs::write(&p, "a@example.test\nb@example.test\nbroken line\n").unwrap();
        assert!(l.reload_if_changed().is_err());
        assert!(
            l.data().contains(&mb("b@example.test")),
            "last good contents stay"
        );
    }
}
