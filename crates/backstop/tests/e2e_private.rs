//! What backstop writes is its own, whatever the umask it was started with: the state
//! directory, the queue with every message body, the store with the generated BATV key,
//! quarantined bounces and Maildir files; a state directory others may write is refused, and a
//! configuration holding secrets that every user can read is warned about.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use support::*;

/// Every directory under `root` (itself included) has mode `dir`, every file and socket `file`.
fn modes_under(root: &Path, dir: u32, file: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let t = meta.file_type();
        let want = if t.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            dir
        } else {
            assert!(t.is_file() || t.is_socket(), "{}", p.display());
            files += 1;
            file
        };
        if mode != want {
            wrong.push(format!("{}: {mode:04o}", p.display()));
        }
    }
    assert!(files > 0, "nothing under {}", root.display());
    wrong
}

#[test]
fn queue_store_quarantine_and_maildir_are_private_under_umask_022() {
    // the usual umask, as a service manager or a shell would leave it
    // SAFETY: sets the process's file creation mask; other tests create only temporary files
    unsafe {
        libc::umask(0o022);
    }
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let dead = free_port(); // queue.test's next hop: nobody listens, the message stays queued
    let extra = format!(
        "batv = \"sign\"\nbackscatter = \"quarantine\"\n\
         [[domain]]\nname = \"queue.test\"\nrecipients = [\"list:{users}\"]\n\
         next_hop = \"smtp:127.0.0.1:{dead}\"\nrelay = \"queue\"\n",
        users = dir.path().join("users.txt").display()
    );
    // example.test's table is the last one: extra goes on in it
    let text = list_config(
        dir.path(),
        &["alice@example.test", "bob@queue.test"],
        &format!("maildir:{}", mail.display()),
        "",
    ) + &extra;
    let b = Backstop::start(dir.path(), &text);
    // delivered into Maildir; queued; quarantined
    let (code, t) = swaks(
        b.addr,
        &["--from", "a@client.test", "--to", "alice@example.test"],
    );
    assert_eq!(code, 0, "{t}");
    let (code, t) = swaks(
        b.addr,
        &["--from", "a@client.test", "--to", "bob@queue.test"],
    );
    assert_eq!(code, 0, "{t}");
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO mx.spam-victim.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "{}.\r\n",
            FORGED_BOUNCE.replace("RCPT", "alice@example.test")
        )
        .as_bytes(),
    );
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    let (_, list, _) = b.cli(&["quarantine", "list"]);
    assert!(list.contains("alice@example.test"), "{list}");
    let (_, queue, _) = b.cli(&["queue", "list"]);
    assert!(queue.contains("bob@queue.test"), "{queue}");
    // the BATV key was generated into the store at the first start (no [batv] keys)
    let state = dir.path().join("state");
    assert!(state.join("backstop.redb").is_file());
    for (what, root) in [("state_dir", &state), ("Maildir", &mail)] {
        let wrong = modes_under(root, 0o700, 0o600);
        assert!(wrong.is_empty(), "{what}: {wrong:#?}");
    }
    drop(b);

    // a state directory that others may write: refused, saying which and what to do
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o775)).unwrap();
    let config = dir.path().join("backstop.toml");
    let (code, _, err) = run_backstop(["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("can be written by other users (mode 0775)") && err.contains("chmod 700"),
        "{err}"
    );
    // one that others may only read: made private, and said so
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, err) = run_backstop(["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("made private"), "{err}");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // secrets in a configuration every user can read
    let secret = format!("{text}[batv]\nkeys = [\"1:a-secret-of-our-own\"]\n");
    std::fs::write(&config, secret).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_backstop(["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("holds secrets (batv.keys) and every user can read it (mode 0644)"),
        "{err}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (_, _, err) = run_backstop(["check-config", "--config", config.to_str().unwrap()]);
    assert!(!err.contains("holds secrets"), "{err}");
}
