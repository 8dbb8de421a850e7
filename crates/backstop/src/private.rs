//! What backstop writes stays backstop's: queued messages with their bodies, the store (which
//! holds the generated BATV key), quarantined bounces, Maildir files.
//!
//! Responsible for: the file mode creation mask of the commands that write state (0077, so
//! files are 0600 and directories 0700 whatever umask backstop was started with); refusing a
//! state directory or a key file that other users can write; making a state directory (and what is directly
//! in it) that other users can read private, and saying so; the warning for a configuration file
//! that holds secrets and that every user can read. Not responsible for: what is written (the
//! modules that write it) or the user backstop runs as (the service unit, `contrib/`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// From now on, what this process creates is for its own user only.
pub fn restrict_umask() {
    // SAFETY: umask only sets the process's creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Checks the state directory if it exists: an error when users other than its owner may
/// write to it (they could replace the queue or the store); when they may read it, it and what
/// is directly in it are made private, and the changes are returned, to be logged.
pub fn check_state_dir(dir: &Path) -> Result<Vec<String>, String> {
    if mode(dir).is_none() {
        return Ok(Vec::new()); // created later, under the mask
    }
    let fix = format!(
        "it holds the queue and the store; make it backstop's own (chmod 700 {})",
        dir.display()
    );
    not_writable_by_others("state_dir", dir, &fix)?;
    let mut changed = Vec::new();
    tighten(dir, 0o700, &mut changed);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => tighten(&e.path(), 0o700, &mut changed),
                Ok(t) if t.is_file() => tighten(&e.path(), 0o600, &mut changed),
                _ => {} // sockets are made private when bound; links are not followed
            }
        }
    }
    Ok(changed)
}

/// An error when users other than its owner may write the key file at `path` (they could
/// put their own key in its place); `key` names it in the configuration.
pub fn check_key_file(key: &str, path: &Path) -> Result<(), String> {
    // a missing file is the loader's error, with its own words
    let fix = format!("chmod 600 (or 640, group backstop) {}", path.display());
    not_writable_by_others(key, path, &fix)
}

/// An error naming `what` at `path` (and `fix`) when users other than its owner may write it;
/// nothing when it is not there.
fn not_writable_by_others(what: &str, path: &Path, fix: &str) -> Result<(), String> {
    match mode(path) {
        Some(m) if m & 0o022 != 0 => Err(format!(
            "{what} {} can be written by other users (mode {m:04o}): {fix}",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The permission bits of `path` (links followed), if it is there.
fn mode(path: &Path) -> Option<u32> {
    Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o7777)
}

/// Takes group and other permissions away from `path` if it has any (`private`: its new mode).
fn tighten(path: &Path, private: u32, changed: &mut Vec<String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let line = match std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)) {
        Ok(()) => format!("{}: mode {mode:04o} -> {private:04o}", path.display()),
        Err(e) => format!(
            "{}: mode {mode:04o}, cannot make it private: {e}",
            path.display()
        ),
    };
    changed.push(line);
}

/// A warning when the configuration file holds secrets (`secrets`: their keys) and every user
/// of the machine can read it.
pub fn config_warning(file: &Path, secrets: &[&str]) -> Option<String> {
    let mode = mode(file)?;
    if secrets.is_empty() || mode & 0o004 == 0 {
        return None;
    }
    Some(format!(
        "configuration {} holds secrets ({}) and every user can read it (mode {mode:04o}): \
         make it readable by root and backstop's group only (chown root:backstop; chmod 640)",
        file.display(),
        secrets.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_readable_state_dir_is_made_private_and_a_writable_one_refused() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        assert!(check_state_dir(&state).unwrap().is_empty(), "not there yet");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(state.join("queue")).unwrap();
        std::fs::write(state.join("backstop.redb"), "").unwrap();
        set(&state, 0o755);
        set(&state.join("queue"), 0o755);
        set(&state.join("backstop.redb"), 0o644);
        let changed = check_state_dir(&state).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(mode(&state).unwrap(), 0o700);
        assert_eq!(mode(&state.join("queue")).unwrap(), 0o700);
        assert_eq!(mode(&state.join("backstop.redb")).unwrap(), 0o600);
        assert!(
            check_state_dir(&state).unwrap().is_empty(),
            "nothing left to do"
        );
        set(&state, 0o775);
        let e = check_state_dir(&state).unwrap_err();
        assert!(
            e.contains("can be written by other users (mode 0775)"),
            "{e}"
        );
    }

    #[test]
    fn a_key_file_others_may_write_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("key.pem");
        std::fs::write(&k, "").unwrap();
        set(&k, 0o640);
        assert!(check_key_file("listen[0].tls_key", &k).is_ok());
        set(&k, 0o666);
        let e = check_key_file("listen[0].tls_key", &k).unwrap_err();
        assert!(e.starts_with("listen[0].tls_key"), "{e}");
        assert!(
            e.contains("can be written by other users (mode 0666)"),
            "{e}"
        );
        assert!(check_key_file("x", &d.path().join("none")).is_ok());
    }

    #[test]
    fn secrets_in_a_world_readable_configuration_are_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("backstop.toml");
        std::fs::write(&f, "").unwrap();
        set(&f, 0o644);
        let w = config_warning(&f, &["batv.keys", "web.token"]).unwrap();
        assert!(w.contains("holds secrets (batv.keys, web.token)"), "{w}");
        assert!(config_warning(&f, &[]).is_none(), "no secrets");
        set(&f, 0o640);
        assert!(config_warning(&f, &["batv.keys"]).is_none(), "group only");
    }
}
