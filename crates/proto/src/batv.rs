//! BATV (Bounce Address Tag Validation): signing the envelope sender of mail that leaves, and
//! checking the tag on the recipient of a bounce that comes back.
//!
//! The signed form is Exim's `prvs=KDDDHHHHHH=local@domain`: `K` the key number (0–9), `DDD`
//! the last three digits of the day number (days since 1970) on which the tag expires, and
//! `HHHHHH` the first three bytes, in hex, of HMAC-SHA1 keyed with the secret over `K`, `DDD`
//! and the original address `local@domain`. An address signed here verifies with Exim's
//! `${prvscheck}` and the other way round.
//!
//! Responsible for: signing, recognising a tag in the forms seen in the wild
//! (`prvs=TAG=user@dom`, `prvs=user=TAG@dom`, `btv1==TAG==user@dom`, `user+prvs=TAG@dom`) and
//! checking it against a set of keys at a time passed in.
//! Not responsible for: where keys come from, which domains are signed, or what a failed check
//! leads to (the gateway's policy).

use crate::address::{AddressError, Mailbox};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::fmt;

const DAY: u64 = 86_400;

/// The longest secret Exim accepts (one SHA-1 block); longer ones would not interoperate.
pub const MAX_SECRET: usize = 64;

/// One signing key: its number, carried in every tag, and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    number: u8,
    secret: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never print the secret
        write!(f, "Key({})", self.number)
    }
}

/// Why a key cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Tags carry the key number as one digit.
    Number,
    /// Empty, or longer than [`MAX_SECRET`] bytes.
    Secret,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Number => "key number must be 0 to 9",
            KeyError::Secret => "secret must be 1 to 64 bytes",
        })
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// A key numbered `number` (0–9) with `secret` (1–64 bytes).
    pub fn new(number: u8, secret: &[u8]) -> Result<Key, KeyError> {
        if number > 9 {
            return Err(KeyError::Number);
        }
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(KeyError::Secret);
        }
        Ok(Key {
            number,
            secret: secret.to_vec(),
        })
    }

    /// The key number carried in tags.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The six hex digits for `address` with day stamp `day` (0–999).
    fn hash(&self, day: u16, address: &str) -> [u8; 3] {
        // a key of 1..=64 bytes is always accepted by HMAC
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{}{day:03}{address}", self.number).as_bytes());
        let out = mac.finalize().into_bytes();
        [out[0], out[1], out[2]]
    }
}

/// The day stamp of a tag that expires `validity_days` after `now` (Unix seconds).
pub fn expiry_stamp(now: u64, validity_days: u16) -> u16 {
    ((now / DAY + u64::from(validity_days)) % 1000) as u16
}

/// The tag `KDDDHHHHHH` (lower-case hex, as Exim writes it) for `address` signed at `now`.
pub fn tag(address: &Mailbox, key: &Key, now: u64, validity_days: u16) -> String {
    let day = expiry_stamp(now, validity_days);
    let [a, b, c] = key.hash(day, &plain(address));
    format!("{}{day:03}{a:02x}{b:02x}{c:02x}", key.number)
}

/// `address` signed: `prvs=KDDDHHHHHH=local@domain`. Fails only when the signed local part
/// would be longer than SMTP allows (the caller then sends the address unsigned).
pub fn sign(
    address: &Mailbox,
    key: &Key,
    now: u64,
    validity_days: u16,
) -> Result<Mailbox, AddressError> {
    let t = tag(address, key, now, validity_days);
    Mailbox::new(
        &format!("prvs={t}={}", address.local()),
        address.domain().clone(),
    )
}

/// The address the hash is computed over: `local@domain` as written, local part unquoted.
fn plain(address: &Mailbox) -> String {
    format!("{}@{}", address.local(), address.domain())
}

/// Where the tag sits in a recipient address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `prvs=TAG=user@dom` (Exim, the BATV draft).
    Prvs,
    /// `prvs=user=TAG@dom` (an earlier draft's order).
    PrvsUserFirst,
    /// `btv1==TAG==user@dom` (Barracuda).
    Btv1,
    /// `user+prvs=TAG@dom` (sub-address form).
    Plus,
}

impl Format {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Prvs => "prvs",
            Format::PrvsUserFirst => "prvs-user-first",
            Format::Btv1 => "btv1",
            Format::Plus => "plus",
        }
    }
}

/// A recipient that carries a BATV tag, and the address without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    /// Where the tag was.
    pub format: Format,
    /// The tag as received (not yet known to be well formed).
    pub tag: String,
    /// The address the tag was added to.
    pub address: Mailbox,
}

/// Recognises a BATV tag in `rcpt`; `None` for an ordinary address. The prefixes are matched
/// without regard to case.
pub fn read(rcpt: &Mailbox) -> Option<Tagged> {
    let local = rcpt.local();
    let (format, tag, user) = if let Some(rest) = strip_prefix_ci(local, "prvs=") {
        let (first, second) = rest.split_once('=')?;
        match rest.rsplit_once('=') {
            // prvs=user=TAG: the last part is a tag and the first is not
            Some((user, last)) if well_formed(last) && !well_formed(first) => {
                (Format::PrvsUserFirst, last, user)
            }
            _ => (Format::Prvs, first, second),
        }
    } else if let Some(rest) = strip_prefix_ci(local, "btv1==") {
        let (tag, user) = rest.split_once("==")?;
        (Format::Btv1, tag, user)
    } else {
        let at = find_ci(local, "+prvs=")?;
        (Format::Plus, &local[at + 6..], &local[..at])
    };
    if tag.is_empty() {
        return None;
    }
    let address = Mailbox::new(user, rcpt.domain().clone()).ok()?;
    Some(Tagged {
        format,
        tag: tag.to_string(),
        address,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn find_ci(s: &str, needle: &str) -> Option<usize> {
    s.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `KDDDHHHHHH`: one digit, three digits, six hex digits (either case).
fn well_formed(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() == 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4..].iter().all(u8::is_ascii_hexdigit)
}

/// The result of checking a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Made by one of our keys and not expired.
    Valid,
    /// Made by one of our keys, but its day has passed.
    Expired,
    /// Not a tag we made: malformed, an unknown key number, or a wrong hash.
    Invalid(Invalid),
}

/// Why a tag is not ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not `KDDDHHHHHH`.
    Malformed,
    /// No key has its number.
    UnknownKey,
    /// The hash does not match (tampered, or another address).
    BadHash,
}

impl Check {
    /// `valid`, `expired` or `invalid`, as logged and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Valid => "valid",
            Check::Expired => "expired",
            Check::Invalid(_) => "invalid",
        }
    }
}

/// Checks `tagged` against `keys` at `now`. A tag is current from the day it was made until
/// its expiry day, inclusive; day stamps wrap at 1000, so the distance to the expiry day is
/// taken modulo 1000 and a tag more than `validity_days` ahead has expired (it was made about
/// 1000 days ago, or was never made here).
pub fn check(tagged: &Tagged, keys: &[Key], now: u64, validity_days: u16) -> Check {
    let tag = tagged.tag.as_str();
    if !well_formed(tag) {
        return Check::Invalid(Invalid::Malformed);
    }
    let number = tag.as_bytes()[0] - b'0';
    let day: u16 = tag[1..4].parse().unwrap_or(0);
    let given = &tag[4..];
    let address = plain(&tagged.address);
    let mut known = false;
    for key in keys.iter().filter(|k| k.number == number) {
        known = true;
        let [x, y, z] = key.hash(day, &address);
        if format!("{x:02x}{y:02x}{z:02x}").eq_ignore_ascii_case(given) {
            let today = ((now / DAY) % 1000) as u16;
            let ahead = (day + 1000 - today) % 1000;
            return match ahead <= validity_days {
                true => Check::Valid,
                false => Check::Expired,
            };
        }
    }
    Check::Invalid(match known {
        true => Invalid::BadHash,
        false => Invalid::UnknownKey,
    })
}
