//! The bounce parser on arbitrary bytes: it must never panic, and what it finds must hold
//! together (every failure names a recipient; statuses look like statuses).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = backstop_proto::bounce::parse(data);
    for f in &b.failures {
        assert!(!f.recipient.is_empty());
        if let Some(s) = &f.status {
            assert_eq!(s.split('.').count(), 3, "{s}");
        }
    }
});
