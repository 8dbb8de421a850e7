//! The evidence about one incoming bounce and the one verdict drawn from it (pure rules).

use std::fmt;

/// What the recipients' BATV tags said (the weakest of the transaction's recipients).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BatvEvidence {
    /// A tag made by one of our keys, still current.
    Valid,
    /// No tag, on a domain that signs.
    Missing,
    /// A tag of ours whose day has passed.
    Expired,
    /// A tag we did not make.
    Invalid,
}

impl BatvEvidence {
    /// `valid`, `missing`, `expired` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            BatvEvidence::Valid => "valid",
            BatvEvidence::Missing => "missing",
            BatvEvidence::Expired => "expired",
            BatvEvidence::Invalid => "invalid",
        }
    }

    /// The reason a recipient refused for it is recorded with (`batv-missing`, ...).
    pub fn refusal(self) -> &'static str {
        match self {
            BatvEvidence::Valid => "batv-valid",
            BatvEvidence::Missing => "batv-missing",
            BatvEvidence::Expired => "batv-expired",
            BatvEvidence::Invalid => "batv-invalid",
        }
    }

    /// Its count label (see `stats::LABELS`).
    pub fn label(self) -> &'static str {
        match self {
            BatvEvidence::Valid => "batv=valid",
            BatvEvidence::Missing => "batv=missing",
            BatvEvidence::Expired => "batv=expired",
            BatvEvidence::Invalid => "batv=invalid",
        }
    }
}

/// Whether the quoted original's Message-ID is in the sent log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgId {
    /// Sent from here.
    Known,
    /// Quoted, but never sent from here (or longer ago than the sent log keeps).
    Unknown,
    /// Not quoted.
    Absent,
}

/// Whether the quoted original passed one of our relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    /// One of its `Received:` headers names one of our relay hosts.
    Ours,
    /// It has `Received:` headers, none of them ours.
    Foreign,
    /// No `Received:` headers quoted.
    Absent,
}

/// Everything known about one incoming message that may be a bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Null sender, or a delivery report by its content.
    pub bounce: bool,
    /// The recipients' tags; `None` where no recipient's domain signs.
    pub batv: Option<BatvEvidence>,
    /// The quoted original's Message-ID.
    pub msgid: MsgId,
    /// The quoted original's path.
    pub relay: Relay,
}

/// The verdict on one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a bounce, or a bounce that answers mail sent from here, or one we cannot judge.
    Genuine,
    /// A bounce for mail that never left here.
    Backscatter,
}

impl Verdict {
    /// `genuine` or `backscatter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Genuine => "genuine",
            Verdict::Backscatter => "backscatter",
        }
    }
}

impl Evidence {
    /// The verdict. Positive evidence that the bounce answers our mail (a valid tag, a known
    /// Message-ID, our relay in its path) settles it; otherwise it is backscatter when it
    /// carries evidence against (a bad tag, an unknown Message-ID, a foreign path), and
    /// genuine when it carries none at all (nothing quoted, no tag expected): no mail is
    /// withheld on an absence of evidence.
    pub fn verdict(&self) -> Verdict {
        if !self.bounce {
            return Verdict::Genuine;
        }
        let ours = self.batv == Some(BatvEvidence::Valid)
            || self.msgid == MsgId::Known
            || self.relay == Relay::Ours;
        let against = matches!(
            self.batv,
            Some(BatvEvidence::Invalid | BatvEvidence::Expired)
        ) || self.msgid == MsgId::Unknown
            || self.relay == Relay::Foreign;
        match (ours, against) {
            (true, _) => Verdict::Genuine,
            (false, true) => Verdict::Backscatter,
            (false, false) => Verdict::Genuine,
        }
    }
}

impl MsgId {
    /// `known`, `unknown` or `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            MsgId::Known => "known",
            MsgId::Unknown => "unknown",
            MsgId::Absent => "absent",
        }
    }
}

impl Relay {
    /// `ours`, `foreign` or `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Relay::Ours => "ours",
            Relay::Foreign => "foreign",
            Relay::Absent => "absent",
        }
    }
}

impl Evidence {
    /// The count labels of this evidence (see `stats::LABELS`).
    pub fn labels(&self) -> Vec<&'static str> {
        let msgid = match self.msgid {
            MsgId::Known => "msgid=known",
            MsgId::Unknown => "msgid=unknown",
            MsgId::Absent => "msgid=absent",
        };
        let relay = match self.relay {
            Relay::Ours => "relay=ours",
            Relay::Foreign => "relay=foreign",
            Relay::Absent => "relay=absent",
        };
        let verdict = match self.verdict() {
            Verdict::Genuine => "verdict=genuine",
            Verdict::Backscatter => "verdict=backscatter",
        };
        vec![verdict, msgid, relay]
    }
}

impl fmt::Display for Evidence {
    /// `batv=missing,msgid=unknown,relay=foreign` (the `batv` part only where a tag was
    /// expected).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = self.batv {
            write!(f, "batv={},", b.as_str())?;
        }
        write!(
            f,
            "msgid={},relay={}",
            self.msgid.as_str(),
            self.relay.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(batv: Option<BatvEvidence>, msgid: MsgId, relay: Relay) -> Evidence {
        Evidence {
            bounce: true,
            batv,
            msgid,
            relay,
        }
    }

    #[test]
    fn positive_evidence_settles_it() {
        use BatvEvidence::*;
        assert_eq!(
            e(Some(Valid), MsgId::Unknown, Relay::Foreign).verdict(),
            Verdict::Genuine
        );
        assert_eq!(
            e(Some(Missing), MsgId::Known, Relay::Foreign).verdict(),
            Verdict::Genuine
        );
        assert_eq!(
            e(None, MsgId::Unknown, Relay::Ours).verdict(),
            Verdict::Genuine
        );
    }

    #[test]
    fn evidence_against_without_evidence_for_is_backscatter() {
        use BatvEvidence::*;
        for ev in [
            e(Some(Missing), MsgId::Unknown, Relay::Absent),
            e(Some(Missing), MsgId::Absent, Relay::Foreign),
            e(None, MsgId::Unknown, Relay::Foreign),
            e(Some(Expired), MsgId::Absent, Relay::Absent),
            e(Some(Invalid), MsgId::Absent, Relay::Absent),
        ] {
            assert_eq!(ev.verdict(), Verdict::Backscatter, "{ev}");
        }
    }

    #[test]
    fn no_evidence_at_all_is_not_withheld() {
        assert_eq!(
            e(Some(BatvEvidence::Missing), MsgId::Absent, Relay::Absent).verdict(),
            Verdict::Genuine
        );
        let mut ordinary = e(None, MsgId::Unknown, Relay::Foreign);
        ordinary.bounce = false;
        assert_eq!(ordinary.verdict(), Verdict::Genuine);
    }

    #[test]
    fn reasons_read_as_logged() {
        assert_eq!(
            e(Some(BatvEvidence::Missing), MsgId::Unknown, Relay::Foreign).to_string(),
            "batv=missing,msgid=unknown,relay=foreign"
        );
        assert_eq!(
            e(None, MsgId::Known, Relay::Absent).to_string(),
            "msgid=known,relay=absent"
        );
    }
}
