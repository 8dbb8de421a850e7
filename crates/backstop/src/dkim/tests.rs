use super::*;
use crate::test_support::for_tests;

const KEYS: &str = "[[dkim]]\ndomain = \"example.test\"\nselector = \"r1\"\n\
                    [[dkim]]\ndomain = \"example.test\"\nselector = \"e1\"\nalgorithm = \"ed25519\"\n\
                    [[dkim]]\ndomain = \"example.test\"\nselector = \"r2\"\nsign = false\n\
                    [[dkim]]\ndomain = \"sub.example.test\"\nselector = \"s\"\nalgorithm = \"ed25519\"\n";

const MESSAGE: &str = "Received: from x by mx.example.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n\
                       From: Alice <alice@example.test>\r\nTo: bob@far.test\r\n\
                       Subject: hello\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
                       Message-ID: <m1@example.test>\r\n\r\nHello Bob.\r\n";

fn signer() -> (tempfile::TempDir, Signer) {
    let (d, cfg, _) = for_tests(KEYS);
    let s = Signer::load(&cfg, true).unwrap();
    (d, s)
}

fn content(parts: &[&[u8]]) -> Content {
    Content::of(parts.iter().map(|p| p.to_vec()).collect())
}

#[test]
fn keys_are_generated_once_private_and_published_as_their_records() {
    let (d, cfg, _) = for_tests(KEYS);
    let before = Signer::load(&cfg, false).unwrap();
    assert!(
        before.keys().iter().all(|k| !k.exists()),
        "nothing generated yet"
    );
    let first = Signer::load(&cfg, true).unwrap();
    let again = Signer::load(&cfg, true).unwrap();
    for (a, b) in first.keys().iter().zip(again.keys()) {
        assert_eq!(a.record(), b.record(), "read back, not generated again");
        let mode = std::fs::metadata(&a.path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600, "{}", a.path.display());
    }
    let rsa = &first.keys()[0];
    assert_eq!(rsa.record_name(), "r1._domainkey.example.test");
    assert!(
        rsa.record().starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"),
        "SPKI of RSA-2048"
    );
    let ed = &first.keys()[1];
    assert!(ed.record().starts_with("v=DKIM1; k=ed25519; p="));
    // 32 bytes in base64: 44 characters
    assert_eq!(ed.record().rsplit("p=").next().unwrap().len(), 44);
    assert_eq!(
        ed.path,
        d.path().join("var/dkim/example.test.e1.key"),
        "under state_dir"
    );
}

#[test]
fn the_author_domain_or_its_nearest_parent_signs_else_the_sender_domain() {
    let (_d, s) = signer();
    assert_eq!(s.domain_for("example.test"), Some("example.test"));
    assert_eq!(s.domain_for("EXAMPLE.test."), Some("example.test"));
    assert_eq!(s.domain_for("gw.example.test"), Some("example.test"));
    assert_eq!(s.domain_for("sub.example.test"), Some("sub.example.test"));
    assert_eq!(s.domain_for("a.sub.example.test"), Some("sub.example.test"));
    assert_eq!(s.domain_for("badexample.test"), None);
    let foreign = MESSAGE.replace("alice@example.test", "alice@other.test");
    assert_eq!(s.sign(&content(&[foreign.as_bytes()]), None), Signed::NoKey);
    let Signed::Yes { domain, .. } = s.sign(&content(&[foreign.as_bytes()]), Some("example.test"))
    else {
        panic!("the envelope sender's domain signs when the author's has no key")
    };
    assert_eq!(domain, "example.test");
}

#[test]
fn both_signing_keys_sign_and_the_rotation_key_does_not() {
    let (_d, s) = signer();
    let Signed::Yes {
        header,
        domain,
        selectors,
        ..
    } = s.sign(&content(&[MESSAGE.as_bytes()]), None)
    else {
        panic!("signed")
    };
    assert_eq!(domain, "example.test");
    assert_eq!(selectors, "r1 (rsa), e1 (ed25519)");
    let header = String::from_utf8(header).unwrap();
    assert_eq!(header.matches("DKIM-Signature: ").count(), 2, "{header}");
    assert!(header.contains("a=rsa-sha256; s=r1; d=example.test; c=relaxed/relaxed"));
    assert!(header.contains("a=ed25519-sha256; s=e1; d=example.test"));
    assert!(
        !header.contains("s=r2"),
        "sign = false: published, not used"
    );
    assert!(header.ends_with("\r\n"));
    // From twice: a second From cannot be added
    assert!(header.contains(":From:From:"), "{header}");
}

#[test]
fn a_message_in_pieces_signs_as_the_same_message_whole() {
    let (_d, s) = signer();
    let body: String = (0..5000).map(|i| format!("line {i}\r\n")).collect();
    let whole = format!("{MESSAGE}{body}");
    let bytes = whole.as_bytes();
    let pieces = content(&[&bytes[..30], &bytes[30..200], &bytes[200..]]);
    let bh = |signed: Signed| match signed {
        Signed::Yes { header, .. } => {
            let h = String::from_utf8(header).unwrap();
            h.split("bh=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        bh(s.sign(&pieces, None)),
        bh(s.sign(&content(&[bytes]), None))
    );
}

#[test]
fn a_message_carrying_our_valid_signature_is_not_signed_twice() {
    let (_d, s) = signer();
    let Signed::Yes { header, .. } = s.sign(&content(&[MESSAGE.as_bytes()]), None) else {
        panic!("signed")
    };
    let looped = [header.as_slice(), MESSAGE.as_bytes()].concat();
    assert_eq!(
        s.sign(&content(&[&looped]), None),
        Signed::Already {
            domain: "example.test".into()
        }
    );
    // changed on the way back: our signature no longer verifies, so it is signed again
    let changed = String::from_utf8(looped)
        .unwrap()
        .replace("Hello Bob.", "Hello Eve.");
    assert!(matches!(
        s.sign(&content(&[changed.as_bytes()]), None),
        Signed::Yes { .. }
    ));
}

#[test]
fn bad_keys_are_refused_with_their_file() {
    let (d, cfg, _) = for_tests("");
    let file = d.path().join("k.pem");
    std::fs::write(&file, "not a key\n").unwrap();
    let with = |algorithm: &str| {
        let extra = format!(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"a\"\nalgorithm = \"{algorithm}\"\n\
             key = \"{}\"\n",
            file.display()
        );
        let (_d2, cfg, _) = for_tests(&extra);
        Signer::load(&cfg, true).err().map(|e| e.to_string())
    };
    let err = with("rsa").unwrap();
    assert!(err.contains("k.pem: no PEM private key"), "{err}");
    // an Ed25519 key where RSA is configured
    let ed = Ed25519Key::generate_pkcs8().unwrap();
    std::fs::write(&file, pem("PRIVATE KEY", &ed)).unwrap();
    let err = with("rsa").unwrap();
    assert!(err.contains("not a usable RSA key"), "{err}");
    assert_eq!(with("ed25519"), None);
    // a configured file that is missing is an error, never generated in its place
    std::fs::remove_file(&file).unwrap();
    let err = with("rsa").unwrap();
    assert!(err.contains("k.pem: No such file"), "{err}");
    drop(cfg);
}

#[test]
fn the_configuration_refuses_two_signing_keys_of_one_algorithm_and_a_selector_twice() {
    let two = "[[dkim]]\ndomain = \"example.test\"\nselector = \"a\"\n\
               [[dkim]]\ndomain = \"example.test\"\nselector = \"b\"\n";
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("users"), "alice@example.test\n").unwrap();
    let text = |extra: &str| {
        format!(
            "hostname = \"mx.example.test\"\nstate_dir = \"var\"\n\
             [[listen]]\naddr = \"127.0.0.1:2525\"\n[[domain]]\nname = \"example.test\"\n\
             recipients = [\"list:users\"]\nnext_hop = \"maildir:m\"\n{extra}"
        )
    };
    let err = Config::from_toml(&text(two), d.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("dkim[1].sign: example.test already signs"),
        "{err}"
    );
    let twice = "[[dkim]]\ndomain = \"example.test\"\nselector = \"a\"\n\
                 [[dkim]]\ndomain = \"example.test\"\nselector = \"A\"\nalgorithm = \"ed25519\"\n";
    let err = Config::from_toml(&text(twice), d.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("dkim[1].selector: \"a\" is configured twice"),
        "{err}"
    );
    let bad = "[[dkim]]\ndomain = \"example.test\"\nselector = \"a_b\"\n";
    let err = Config::from_toml(&text(bad), d.path())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("dkim[0].selector:"), "{err}");
    let alg = "[[dkim]]\ndomain = \"example.test\"\nselector = \"a\"\nalgorithm = \"dsa\"\n";
    let err = Config::from_toml(&text(alg), d.path())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("dkim[0].algorithm: \"dsa\""), "{err}");
}

#[test]
fn no_signature_leaves_white_space_between_its_b_value_and_the_semicolon() {
    let (_d, s) = signer();
    let mut folded = 0;
    for i in 0..60 {
        let m = MESSAGE.replace("hello", &"x".repeat(i));
        let Signed::Yes { header, .. } = s.sign(&content(&[m.as_bytes()]), None) else {
            panic!("signed")
        };
        let header = String::from_utf8(header).unwrap();
        assert!(!header.contains("\r\n\t;"), "{header}");
        folded += usize::from(header.contains("==;\r\n"));
    }
    assert!(folded > 0, "some b= values end a line (the case mended)");
    assert_eq!(tidy("b=abc\r\n\t;\r\n".into()), "b=abc;\r\n");
}
