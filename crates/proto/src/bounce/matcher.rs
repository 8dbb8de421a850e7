//! Which of many phrase tables a text matches, in one pass over the text.
//!
//! Responsible for: [`PhraseSet`], built once from up to 64 tables of lower-case phrases; an
//! entry `a…b` matches when `a` occurs and `b` occurs after it (pieces in order, not
//! overlapping, anything between). One Aho-Corasick pass finds every piece; the in-order check
//! then works on the found positions only. Not responsible for: normalising the text (the
//! caller lower-cases it the same way as the tables) or what a match means.
//!
//! Pure, never panics; the work is linear in the text plus the number of piece occurrences.

use aho_corasick::AhoCorasick;
use std::collections::HashMap;

/// The tables, compiled.
pub struct PhraseSet {
    ac: AhoCorasick,
    /// Per piece: the (table, entry) pairs whose entry starts with it.
    starts: Vec<Vec<(u8, u16)>>,
    /// Per table, per entry: its pieces.
    entries: Vec<Vec<Vec<u32>>>,
}

impl PhraseSet {
    /// Compiles `tables` (at most 64; entries split at `…`). Panics only on a programming error
    /// in the tables (more than 64, an empty piece), never on input.
    pub fn new(tables: &[&[&str]]) -> PhraseSet {
        assert!(tables.len() <= 64, "at most 64 tables");
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let mut pieces: Vec<&str> = Vec::new();
        let mut entries = Vec::with_capacity(tables.len());
        for table in tables {
            let mut compiled = Vec::with_capacity(table.len());
            for entry in *table {
                let ps = entry.split('…').map(|p| {
                    assert!(!p.is_empty(), "empty piece in {entry:?}");
                    *ids.entry(p).or_insert_with(|| {
                        pieces.push(p);
                        (pieces.len() - 1) as u32
                    })
                });
                compiled.push(ps.collect::<Vec<u32>>());
            }
            entries.push(compiled);
        }
        let mut starts = vec![Vec::new(); pieces.len()];
        for (t, table) in entries.iter().enumerate() {
            for (e, entry) in table.iter().enumerate() {
                starts[entry[0] as usize].push((t as u8, e as u16));
            }
        }
        let ac = AhoCorasick::new(&pieces).expect("phrase tables compile");
        PhraseSet {
            ac,
            starts,
            entries,
        }
    }

    /// The tables (bit `i` for `tables[i]`) one of whose entries occurs in `text`.
    pub fn matches(&self, text: &str) -> u64 {
        // every occurrence of every piece: (piece, start, end), sorted by piece then start
        let mut hits: Vec<(u32, u32, u32)> = self
            .ac
            .find_overlapping_iter(text)
            .map(|m| (m.pattern().as_u32(), m.start() as u32, m.end() as u32))
            .collect();
        hits.sort_unstable();
        let mut found = 0u64;
        let mut last = None;
        for &(piece, _, _) in &hits {
            if last == Some(piece) {
                continue;
            }
            last = Some(piece);
            for &(t, e) in &self.starts[piece as usize] {
                if found & (1 << t) == 0 && in_order(&hits, &self.entries[t as usize][e as usize]) {
                    found |= 1 << t;
                }
            }
        }
        found
    }
}

/// The pieces occur in this order, each starting after the previous one's earliest fitting
/// occurrence ends (the greedy reading, as `str::find` piece after piece would).
fn in_order(hits: &[(u32, u32, u32)], pieces: &[u32]) -> bool {
    let mut from = 0u32;
    for &p in pieces {
        let at = hits.partition_point(|&(q, start, _)| (q, start) < (p, from));
        match hits.get(at) {
            Some(&(q, _, end)) if q == p => from = end,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_whole_or_in_order() {
        let set = PhraseSet::new(&[&["mailbox full", "quota…exceeded"], &["user unknown"]]);
        assert_eq!(set.matches("550 mailbox full"), 0b01);
        assert_eq!(set.matches("quota for user exceeded"), 0b01);
        assert_eq!(set.matches("exceeded quota"), 0);
        assert_eq!(set.matches("user unknown; quota exceeded"), 0b11);
        // pieces do not overlap: "aa…aa" needs two occurrences
        let set = PhraseSet::new(&[&["aa…aa"]]);
        assert_eq!(set.matches("aaa"), 0);
        assert_eq!(set.matches("aa aa"), 1);
        assert_eq!(set.matches(""), 0);
    }
}
