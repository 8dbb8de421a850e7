//! BATV: sign/verify round trips, expiry across the 1000-day wrap, every foreign format,
//! tampered and upper-case tags, and known answers from Exim's algorithm.

use backstop_proto::address::Mailbox;
use backstop_proto::batv::{self, Check, Format, Invalid, Key};

const DAY: u64 = 86_400;

fn mb(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

fn key(n: u8, secret: &str) -> Key {
    Key::new(n, secret.as_bytes()).unwrap()
}

/// Noon UTC of day number `day` (days since 1970).
fn at(day: u64) -> u64 {
    day * DAY + 12 * 3600
}

fn check_at(signed: &Mailbox, keys: &[Key], day: u64) -> Check {
    let t = batv::read(signed).expect("a tag");
    batv::check(&t, keys, at(day), 7)
}

/// Known answers from a real Exim (4.96, Debian bookworm `exim4-daemon-light`), run at Unix
/// time 1795450189 (expiry stamp 787) with `exim4 -be '${prvs{ADDRESS}{SECRET}{K}}'`. The
/// address goes into the HMAC as written, so these are signed with the domain in lower case,
/// as backstop writes every domain.
#[test]
fn known_answers_from_exim() {
    const EXIM_RUN: u64 = 1_795_450_189;
    let s64 = "0123456789abcdef".repeat(4);
    let cases = [
        (
            "user@example.test",
            "secret",
            0,
            "prvs=0787f93fc2=user@example.test",
        ),
        (
            "user@example.test",
            "secret",
            1,
            "prvs=1787c2bf4b=user@example.test",
        ),
        (
            "a+b@sub.example.test",
            "backstop-test-key",
            9,
            "prvs=9787e6d42c=a+b@sub.example.test",
        ),
        (
            "x@y.test",
            "backstop-test-key",
            0,
            "prvs=0787eb5670=x@y.test",
        ),
        (
            "user@example.test",
            s64.as_str(),
            1,
            "prvs=17879589b2=user@example.test",
        ),
        ("x@y.test", "k", 7, "prvs=778707679e=x@y.test"),
        (
            "a+b@sub.example.test",
            "k",
            0,
            "prvs=0787d3cd82=a+b@sub.example.test",
        ),
        (
            "user@example.test",
            "backstop-test-key",
            7,
            "prvs=7787722602=user@example.test",
        ),
    ];
    for (addr, secret, k, want) in cases {
        let signed = batv::sign(&mb(addr), &key(k, secret), EXIM_RUN, 7).unwrap();
        assert_eq!(signed.to_string(), want, "{addr} key {k}");
        // and what Exim signed, we verify (Exim's prvscheck said 1 for the first one)
        let t = batv::read(&mb(want)).unwrap();
        assert_eq!(
            batv::check(&t, &[key(k, secret)], EXIM_RUN, 7),
            Check::Valid
        );
    }
    // Exim's prvscheck, same day: a tag for day 779 (yesterday) has expired, the one for
    // today (780) is valid
    let k0 = [key(0, "secret")];
    let expired = batv::read(&mb("prvs=07791ee095=user@example.test")).unwrap();
    assert_eq!(batv::check(&expired, &k0, 1_795_450_206, 7), Check::Expired);
    let last_day = batv::read(&mb("prvs=0780cb896f=user@example.test")).unwrap();
    assert_eq!(batv::check(&last_day, &k0, 1_795_450_206, 7), Check::Valid);
}

#[test]
fn round_trip_and_expiry_day_inclusive() {
    let k = key(3, "rotate-me");
    let signed = batv::sign(&mb("alice@example.test"), &k, at(20100), 7).unwrap();
    assert!(signed.local().starts_with("prvs=3107"), "{signed}");
    let t = batv::read(&signed).unwrap();
    assert_eq!(t.format, Format::Prvs);
    assert_eq!(t.address, mb("alice@example.test"));
    for day in 20100..=20107 {
        assert_eq!(
            check_at(&signed, std::slice::from_ref(&k), day),
            Check::Valid,
            "day {day}"
        );
    }
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 20108),
        Check::Expired
    );
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 20099 + 500),
        Check::Expired
    );
}

#[test]
fn expiry_wraps_at_1000_days() {
    let k = key(0, "wrap");
    // made on a day ending in 995: expires on the day ending in 002
    let signed = batv::sign(&mb("bob@example.test"), &k, at(20995), 7).unwrap();
    assert!(signed.local().starts_with("prvs=0002"), "{signed}");
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 20995),
        Check::Valid
    );
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 20999),
        Check::Valid
    );
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 21000),
        Check::Valid
    );
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 21002),
        Check::Valid
    );
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 21003),
        Check::Expired
    );
    // the day before it was made is more than 7 days before the expiry stamp: not ours
    assert_eq!(
        check_at(&signed, std::slice::from_ref(&k), 20994),
        Check::Expired
    );
}

#[test]
fn longer_validity_is_honoured() {
    let k = key(1, "long");
    let signed = batv::sign(&mb("carol@example.test"), &k, at(20000), 14).unwrap();
    let t = batv::read(&signed).unwrap();
    assert_eq!(
        batv::check(&t, std::slice::from_ref(&k), at(20014), 14),
        Check::Valid
    );
    assert_eq!(
        batv::check(&t, std::slice::from_ref(&k), at(20015), 14),
        Check::Expired
    );
}

#[test]
fn rotation_old_and_new_keys_both_verify() {
    let (old, new) = (key(1, "old-secret"), key(2, "new-secret"));
    let by_old = batv::sign(&mb("dan@example.test"), &old, at(20000), 7).unwrap();
    let by_new = batv::sign(&mb("dan@example.test"), &new, at(20000), 7).unwrap();
    let both = [new.clone(), old.clone()];
    assert_eq!(check_at(&by_old, &both, 20001), Check::Valid);
    assert_eq!(check_at(&by_new, &both, 20001), Check::Valid);
    // the old key retired: its tags are no longer ours
    assert_eq!(
        check_at(&by_old, std::slice::from_ref(&new), 20001),
        Check::Invalid(Invalid::UnknownKey)
    );
    // same number, another secret: a wrong hash
    assert_eq!(
        check_at(&by_old, &[key(1, "other")], 20001),
        Check::Invalid(Invalid::BadHash)
    );
}

#[test]
fn tampered_tags_are_invalid() {
    let k = key(0, "secret");
    let signed = batv::sign(&mb("user@example.test"), &k, at(116), 7).unwrap();
    let good = signed.local().to_string(); // prvs=0123d64c77=user
    let tamper = |from: &str, to: &str| mb(&format!("{}@example.test", good.replacen(from, to, 1)));
    // one hex digit changed
    assert_eq!(
        check_at(&tamper("d64c77", "d64c78"), std::slice::from_ref(&k), 116),
        Check::Invalid(Invalid::BadHash)
    );
    // the day pushed later to extend the tag's life
    assert_eq!(
        check_at(&tamper("0123", "0124"), std::slice::from_ref(&k), 116),
        Check::Invalid(Invalid::BadHash)
    );
    // the tag moved to another user
    assert_eq!(
        check_at(&tamper("=user", "=mallory"), std::slice::from_ref(&k), 116),
        Check::Invalid(Invalid::BadHash)
    );
    // not KDDDHHHHHH
    for bad in [
        "prvs=0123d64c7=user",
        "prvs=0123d64cxx=user",
        "prvs=x123d64c77=user",
    ] {
        let t = batv::read(&mb(&format!("{bad}@example.test"))).unwrap();
        assert_eq!(
            batv::check(&t, std::slice::from_ref(&k), at(116), 7),
            Check::Invalid(Invalid::Malformed),
            "{bad}"
        );
    }
}

#[test]
fn upper_case_tags_and_prefixes_verify() {
    let k = key(0, "secret");
    let up = mb("PRVS=0123D64C77=user@example.test");
    let t = batv::read(&up).unwrap();
    assert_eq!(t.address, mb("user@example.test"));
    assert_eq!(
        batv::check(&t, std::slice::from_ref(&k), at(116), 7),
        Check::Valid
    );
    // the hash covers the address as signed: a local part whose case was changed is not ours
    let signed = batv::sign(&mb("Mixed.Case@example.test"), &k, at(116), 7).unwrap();
    let lowered = mb(&signed.to_string().to_lowercase());
    assert_eq!(
        check_at(&lowered, std::slice::from_ref(&k), 116),
        Check::Invalid(Invalid::BadHash)
    );
}

#[test]
fn every_foreign_format_is_read_and_stripped() {
    let k = key(0, "secret");
    let t = "0123d64c77"; // the tag of user@example.test on day 116
    let cases = [
        (format!("prvs={t}=user@example.test"), Format::Prvs),
        (format!("prvs=user={t}@example.test"), Format::PrvsUserFirst),
        (format!("btv1=={t}==user@example.test"), Format::Btv1),
        (format!("user+prvs={t}@example.test"), Format::Plus),
        (
            format!("user+PRVS={}@example.test", t.to_uppercase()),
            Format::Plus,
        ),
    ];
    for (addr, format) in cases {
        let tagged = batv::read(&mb(&addr)).unwrap_or_else(|| panic!("{addr}"));
        assert_eq!(tagged.format, format, "{addr}");
        assert_eq!(tagged.address.key(), "user@example.test", "{addr}");
        assert_eq!(
            batv::check(&tagged, std::slice::from_ref(&k), at(116), 7),
            Check::Valid,
            "{addr}"
        );
    }
}

#[test]
fn ordinary_addresses_carry_no_tag() {
    for addr in [
        "user@example.test",
        "prvs@example.test",
        "prvs=@example.test",
        "prvs=nothing@example.test",
        "user+tag@example.test",
        "btv1=x@example.test",
        "a=b@example.test",
    ] {
        assert_eq!(batv::read(&mb(addr)), None, "{addr}");
    }
}

#[test]
fn keys_are_checked() {
    assert!(Key::new(10, b"x").is_err());
    assert!(Key::new(0, b"").is_err());
    assert!(Key::new(0, &[b'k'; 65]).is_err());
    assert!(Key::new(9, &[b'k'; 64]).is_ok());
    assert_eq!(format!("{:?}", key(4, "hidden")), "Key(4)");
}

#[test]
fn signing_an_address_too_long_to_tag_fails_cleanly() {
    let local = "l".repeat(60);
    let addr = mb(&format!("{local}@example.test"));
    assert!(batv::sign(&addr, &key(0, "s"), at(1), 7).is_err());
}

proptest::proptest! {
    /// Any recipient a client can send: reading and checking a tag never panics, and a
    /// recognised tag always leaves a non-empty address.
    #[test]
    fn any_local_part_is_read_safely(local in "[ -~]{1,64}", day in 0u64..40_000) {
        let domain = backstop_proto::address::Domain::parse("example.test", false).unwrap();
        if let Ok(m) = Mailbox::new(&local, domain)
            && let Some(t) = batv::read(&m)
        {
            proptest::prop_assert!(!t.address.local().is_empty());
            let _ = batv::check(&t, &[key(0, "k")], at(day), 7);
        }
    }
}
