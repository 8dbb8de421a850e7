//! `backstop bounce parse` through the real binary: a message file, a Maildir, an mbox and
//! standard input give one JSON object per failed recipient.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/tests/data/sisimai/maildir/bsd")
        .join(name)
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["bounce", "parse"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or(b"")).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_file_a_maildir_an_mbox_and_stdin() {
    let exim = corpus("lhost-exim-01.eml");
    let one = run(&[exim.to_str().unwrap()], None);
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(one[0]["kind"], "bounce");
    assert_eq!(one[0]["recipient"], "kijitora@example.ed.jp");
    assert_eq!(one[0]["reply_code"], 550);
    assert!(one[0]["diagnostic"].as_str().unwrap().contains("550"));

    let raw = std::fs::read(&exim).unwrap();
    let from_stdin = run(&["-"], Some(&raw));
    assert_eq!(from_stdin[0]["recipient"], one[0]["recipient"]);

    let dir = tempfile::tempdir().unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(&exim, dir.path().join("new/1.eml")).unwrap();
    std::fs::copy(corpus("lhost-postfix-01.eml"), dir.path().join("cur/2.eml")).unwrap();
    let maildir = run(&[dir.path().to_str().unwrap()], None);
    assert_eq!(maildir.len(), 2, "{maildir:#?}");

    let mut mbox = Vec::new();
    for f in ["lhost-exim-01.eml", "lhost-postfix-01.eml"] {
        mbox.extend_from_slice(b"From MAILER-DAEMON Mon Nov 23 00:00:00 2026\n");
        mbox.extend_from_slice(&std::fs::read(corpus(f)).unwrap());
        mbox.extend_from_slice(b"\n");
    }
    let path = dir.path().join("mbox");
    std::fs::write(&path, mbox).unwrap();
    let from_mbox = run(&[path.to_str().unwrap()], None);
    assert_eq!(from_mbox.len(), 2, "{from_mbox:#?}");
    assert!(from_mbox[1]["source"].as_str().unwrap().ends_with("mbox#2"));
}
