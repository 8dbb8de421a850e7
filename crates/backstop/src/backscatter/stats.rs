//! Daily counts of the decisions about incoming bounces, kept in the store by UTC day (so the
//! nodes of a cluster count into the same totals) for a week; `backstop bounce stats` shows
//! them.

use crate::store::{Store, StoreError, daily};

/// Every label counted, in the order shown.
pub const LABELS: [&str; 18] = [
    "batv=valid",
    "batv=missing",
    "batv=expired",
    "batv=invalid",
    "verdict=genuine",
    "verdict=backscatter",
    "msgid=known",
    "msgid=unknown",
    "msgid=absent",
    "relay=ours",
    "relay=foreign",
    "relay=absent",
    "action=accept",
    "action=tag",
    "action=quarantine",
    "action=reject",
    "refused=rcpts>1",
    "refused=rate",
];

/// Adds one to each of `labels` for the day of `now`.
pub async fn count(store: &dyn Store, labels: &[&str], now: u64) -> Result<(), StoreError> {
    daily::count(store, "bounces", labels, now).await
}

/// The counts of the day of `now`, every label (zeros included), in [`LABELS`] order.
pub async fn today(store: &dyn Store, now: u64) -> Result<Vec<(&'static str, u64)>, StoreError> {
    daily::today(store, "bounces", &LABELS, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn counts_are_per_day() {
        let d = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&d.path().join("s")).unwrap();
        const DAY: u64 = 86_400;
        let now = 20_000 * DAY + 100;
        count(&s, &["batv=valid", "verdict=genuine"], now)
            .await
            .unwrap();
        count(&s, &["batv=valid"], now + 10).await.unwrap();
        let t = today(&s, now).await.unwrap();
        assert_eq!(t.len(), LABELS.len());
        assert_eq!(t[0], ("batv=valid", 2));
        assert_eq!(t[4], ("verdict=genuine", 1));
        assert_eq!(t[1], ("batv=missing", 0));
        // the next day starts from zero
        assert_eq!(today(&s, now + DAY).await.unwrap()[0], ("batv=valid", 0));
    }
}
