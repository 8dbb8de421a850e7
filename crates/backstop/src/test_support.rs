//! Helpers for unit tests only: a small configuration with its directory and store.

/// Unit tests' configuration: domain example.test (user alice, a list source, a Maildir next
/// hop) plus `extra` TOML; with its directory (kept alive by the caller) and an embedded
/// store in it.
pub(crate) fn for_tests(
    extra: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<crate::config::Config>,
    std::sync::Arc<dyn crate::store::Store>,
) {
    let d = tempfile::tempdir().unwrap();
    let list = d.path().join("users");
    std::fs::write(&list, "alice@example.test\n").unwrap();
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = \"var\"\n[[listen]]\naddr = \"127.0.0.1:2525\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n{extra}",
        list.display()
    );
    let cfg = crate::config::Config::from_toml(&text, d.path()).unwrap();
    let store = crate::store::embedded::EmbeddedStore::open(&d.path().join("s")).unwrap();
    (d, std::sync::Arc::new(cfg), std::sync::Arc::new(store))
}
