//! The configuration file on arbitrary text: reading it never panics, whatever it holds, and a
//! configuration that validates prints (`check-config`) to a file that reads back and prints
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    // relative paths resolve under a directory that does not exist: list files, certificates
    // and keys are never there, so only what needs no file can validate
    let base = Path::new("/nonexistent/backstop-fuzz");
    let Ok(cfg) = backstop::config::Config::from_toml(text, base) else {
        return;
    };
    let printed = cfg.to_toml();
    assert!(!printed.starts_with("# cannot print"), "{printed}");
    // secrets print hidden, so the printed file need not validate; when it does, it prints
    // the same again
    if let Ok(again) = backstop::config::Config::from_toml(&printed, base) {
        assert_eq!(again.to_toml(), printed);
    }
});
