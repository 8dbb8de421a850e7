//! Reason classes of a failed delivery, and the rules that choose one from the remote server's
//! words, the RFC 3463 status and the SMTP reply code.
//!
//! Responsible for: [`Reason`] (a closed set; the names are sisimai's, so results compare with
//! that project's) and [`classify`]: specific phrases first, then the status code, then the
//! reply code. Not responsible for: finding those inputs in a message (the parser).

macro_rules! reasons {
    ($($(#[$doc:meta])* $v:ident = $name:literal,)*) => {
        /// Why a delivery failed.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $v,)*
        }

        impl Reason {
            /// Every class.
            pub const ALL: &[Reason] = &[$(Reason::$v,)*];

            /// The class's name as sisimai writes it (`userunknown`, `mailboxfull`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$v => $name,)*
                }
            }
        }
    };
}

reasons! {
    /// No reason could be told.
    #[default]
    Undefined = "undefined",
    /// The mailbox does not exist.
    UserUnknown = "userunknown",
    /// The mailbox is full (over quota).
    MailboxFull = "mailboxfull",
    /// The message is larger than the server or mailbox takes.
    MesgTooBig = "mesgtoobig",
    /// A limit other than size was exceeded (recipients, header size).
    ExceedLimit = "exceedlimit",
    /// The recipient's domain or host does not exist.
    HostUnknown = "hostunknown",
    /// Our IP address or domain is refused or listed (blocklist, client host rejected).
    Blocked = "blocked",
    /// Our IP address has a bad reputation with the receiver.
    BadReputation = "badreputation",
    /// Our IP address has no (matching) reverse DNS.
    RequirePtr = "requireptr",
    /// SPF, DKIM or DMARC failed for the message.
    AuthFailure = "authfailure",
    /// The message was judged spam.
    SpamDetected = "spamdetected",
    /// The message carried a virus or malware.
    VirusDetected = "virusdetected",
    /// The content (attachment, format) was refused.
    ContentError = "contenterror",
    /// Refused by the receiver's policy.
    PolicyViolation = "policyviolation",
    /// Refused by a security rule (authentication or encryption required).
    SecurityError = "securityerror",
    /// The sender (envelope or header From) was refused.
    Rejected = "rejected",
    /// The recipient or its filter refuses this sender or message.
    Filtered = "filtered",
    /// The receiver does not relay for us.
    NoRelaying = "norelaying",
    /// The domain accepts no mail (null MX, RFC 7505).
    NotAccept = "notaccept",
    /// The mailbox is disabled or suspended.
    Suspend = "suspend",
    /// The recipient has moved to another address.
    HasMoved = "hasmoved",
    /// Delivery was given up after retrying for too long.
    Expired = "expired",
    /// The connection or DNS failed, or mail looped.
    NetworkError = "networkerror",
    /// The receiving system failed.
    SystemError = "systemerror",
    /// The receiving system is out of disk space.
    SystemFull = "systemfull",
    /// A local delivery program failed.
    MailerError = "mailererror",
    /// Too many connections at once.
    TooManyConn = "toomanyconn",
    /// Rate-limited: too many messages too fast.
    Speeding = "speeding",
    /// The message does not comply with RFC 5322.
    NotCompliantRfc = "notcompliantrfc",
    /// An SMTP syntax error.
    SyntaxError = "syntaxerror",
    /// STARTTLS failed.
    FailedStartTls = "failedstarttls",
    /// Held by the receiver; the outcome is not known.
    OnHold = "onhold",
    /// An automatic reply (vacation, out of office).
    Vacation = "vacation",
    /// A feedback-loop (abuse) report.
    Feedback = "feedback",
    /// Delivered after all (a success report).
    Delivered = "delivered",
}

impl Reason {
    /// The class named `s` (as [`Reason::as_str`] writes it).
    pub fn from_name(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// A permanent failure by its nature: the address or domain itself is wrong (unless the
    /// server said 4xx).
    pub fn is_hard(self, status: Option<&str>, reply_code: Option<u16>) -> bool {
        let temporary = status.is_some_and(|s| s.starts_with('4'))
            || (status.is_none() && reply_code.is_some_and(|c| c / 100 == 4));
        let by_nature = matches!(
            self,
            Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved | Reason::NotAccept
        );
        by_nature && !temporary
    }
}

/// Phrases (lower-case) per reason, tried in this order: the first reason with a phrase found
/// in the diagnostic wins.
const PHRASES: &[(Reason, &[&str])] = &[
    (
        Reason::AuthFailure,
        &[
            "dmarc",
            "spf ",
            "spf)",
            "spf check",
            "sender policy framework",
            "dkim",
            "unauthenticated email",
            "5.7.26",
            "authentication check",
        ],
    ),
    (
        Reason::RequirePtr,
        &[
            "reverse dns",
            "ptr record",
            "no ptr",
            "reverse lookup",
            "rdns",
            "reverse hostname",
            "cannot find your hostname",
            "cannot resolve your address",
            "does not have a reverse",
            "client host name",
            "unresolvable",
            "5.7.25",
        ],
    ),
    (Reason::BadReputation, &["reputation", "5.7.650"]),
    (
        Reason::VirusDetected,
        &["virus", "malware", "infected", "trojan"],
    ),
    (
        Reason::PolicyViolation,
        &["content presents a potential", "denied by policy"],
    ),
    (
        Reason::SpamDetected,
        &[
            "content rejected",
            " ube,",
            "spam",
            "junk mail",
            "bulk mail",
            "unsolicited",
            "blocked by content filter",
        ],
    ),
    (
        Reason::Expired,
        &[
            "giving up.",
            "could not deliver for",
            "delivery time expired",
            "retry time",
            "gave up",
            "message expired",
            "queue expired",
            "too long in queue",
            "not delivered within",
            "i'm not going to try again",
            "message timed out",
            "delivery expired",
            "timeout exceeded",
            "could not be delivered for",
            "has been delayed",
            "undeliverable for",
            "time limit exceeded",
            "maximum time",
        ],
    ),
    (
        Reason::MailboxFull,
        &[
            "mailbox full",
            "mailbox is full",
            "quota",
            "mailbox size limit",
            "account is full",
            "full mailbox",
            "mailfolder is full",
            "user is over",
            "exceeded storage",
            "not enough storage",
            "storage allocation",
            "mailbox has exceeded",
            "box is full",
            "is full",
        ],
    ),
    (
        Reason::MesgTooBig,
        &[
            "too large",
            "too big",
            "message size",
            "size limit",
            "exceeds the maximum size",
            "message length exceeds",
            "message file too big",
        ],
    ),
    (
        Reason::SystemFull,
        &[
            "insufficient system storage",
            "disk full",
            "file system full",
            "no space left",
            "out of disk",
        ],
    ),
    (
        Reason::NotAccept,
        &[
            "null mx",
            "accepts no mail",
            "does not accept mail",
            "not accept mail",
            "no mail accepted",
            "mail is not accepted",
        ],
    ),
    (
        Reason::NoRelaying,
        &[
            "relay access denied",
            "relaying denied",
            "not permitted to relay",
            "relay not permitted",
            "unable to relay",
            "relaying not allowed",
            "we do not relay",
            "relay denied",
            "not allowed to relay",
            "relaying to",
            "no relaying",
        ],
    ),
    (
        Reason::HostUnknown,
        &[
            "host unknown",
            "host not found",
            "domain not found",
            "no such domain",
            "name or service not known",
            "name service error",
            "unknown host",
            "domain does not exist",
            "host or domain name not found",
            "nxdomain",
            "no mx",
            "illegal host",
            "domain name not found",
            "unrouteable address",
            "unroutable address",
            "unknown domain",
            "invalid domain",
        ],
    ),
    (
        Reason::Suspend,
        &[
            "temporary locked",
            "frozen",
            "suspended",
            "disabled",
            "inactive",
            "deactivated",
            "not active",
            "account expired",
            "account is locked",
            "has been locked",
            "is unavailable",
            "temporarily unavailable",
            "5.7.13",
        ],
    ),
    (
        Reason::HasMoved,
        &["has moved", "address has changed", "moved to"],
    ),
    (
        Reason::UserUnknown,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "no such mailbox",
            "mailbox not found",
            "recipient not found",
            "invalid recipient",
            "does not exist",
            "unknown recipient",
            "user not found",
            "no mailbox",
            "address unknown",
            "recipient unknown",
            "no such recipient",
            "account does not exist",
            "unknown address",
            "invalid mailbox",
            "bad destination mailbox",
            "addressee unknown",
            "couldn't be found",
            "could not be found",
            "not our customer",
            "user invalid",
            "mailbox unavailable",
            "mailbox does not exist",
            "not a valid",
            "no valid recipients",
            "unknown or illegal alias",
            "not listed in",
            "no account",
            "user doesn't exist",
            "recipient address rejected",
            "invalid address",
            "address rejected",
            "user does not exist",
            "unknown local",
            "not exist",
        ],
    ),
    (
        Reason::TooManyConn,
        &[
            "too many connections",
            "connection limit",
            "too many simultaneous",
            "too many concurrent",
            "maximum number of connections",
            "too many sessions",
        ],
    ),
    (
        Reason::Speeding,
        &[
            "rate limit",
            "too many messages",
            "sending rate",
            "throttl",
            "rate exceeded",
            "exceeded the rate",
        ],
    ),
    (
        Reason::Rejected,
        &[
            "not have permission",
            "permission to post",
            "purported responsible address",
            "permission to post",
            "don't have permission",
            "google groups",
            "google グループ",
            "投稿する権限",
            "sender rejected",
            "sender address rejected",
            "domain of sender",
            "sender verify failed",
            "sender denied",
            "invalid sender",
            "envelope sender",
            "sender domain",
            "rejected sender",
            "sender is not allowed",
            "from address",
            "mail from",
            "sender address",
            "5.1.8",
            "return path",
            "returnpath",
        ],
    ),
    (
        Reason::Blocked,
        &[
            "after initial connection",
            "blacklisted",
            "blocked",
            "blacklist",
            "blocklist",
            "block list",
            "black list",
            "listed in",
            "spamhaus",
            "dnsbl",
            " rbl",
            "client host rejected",
            "your ip",
            "banned",
            "not allowed to send",
            "connection refused",
            "rejected due to",
        ],
    ),
    (
        Reason::SecurityError,
        &[
            "access denied",
            "unauthenticated senders",
            "authentication required",
            "must authenticate",
            "tls required",
            "encryption required",
            "must use tls",
            "security",
            "not authorized",
        ],
    ),
    (
        Reason::PolicyViolation,
        &["policy", "violat", "acceptable use", "prohibited"],
    ),
    (
        Reason::Filtered,
        &[
            "recipient preferences",
            "filtered",
            "filter",
            "refuses",
            "does not receive",
            "refused by recipient",
            "not accept from",
            "rejected by recipient",
        ],
    ),
    (
        Reason::ContentError,
        &["content", "attachment", "illegal character", "mime"],
    ),
    (
        Reason::NotCompliantRfc,
        &[
            "rfc 5322",
            "rfc5322",
            "rfc 2822",
            "rfc2822",
            "not compliant",
            "duplicate header",
            "multiple addresses",
        ],
    ),
    (Reason::FailedStartTls, &["starttls", "tls negotiation"]),
    (
        Reason::MailerError,
        &[
            "mailer error",
            "command died",
            "exit status",
            "pipe to",
            "procmail",
            "command failed",
        ],
    ),
    (
        Reason::SyntaxError,
        &[
            "syntax error",
            "command unrecognized",
            "unrecognized command",
            "line too long",
        ],
    ),
    (
        Reason::ExceedLimit,
        &[
            "recipsizelimit",
            "exceeds limit set by recipient",
            "exceeds the limit",
            "recipient limit",
            "too many recipients",
        ],
    ),
    (
        Reason::NetworkError,
        &[
            "connection timed out",
            "timed out",
            "timeout",
            "network",
            "could not connect",
            "unable to connect",
            "no route to host",
            "lost connection",
            "connection reset",
            "dns",
            "lookup",
            "mail loop",
            "loops back",
            "too many hops",
            "routing loop",
            "loop detected",
            "connection closed",
        ],
    ),
    (
        Reason::SystemError,
        &[
            "system error",
            "internal error",
            "local error",
            "server error",
            "unable to process",
            "temporary failure",
            "system is not configured",
        ],
    ),
];

/// The reason for a status code (`5.1.1`), when no phrase told it.
fn by_status(status: &str) -> Reason {
    let mut it = status.split('.');
    let (_, subject, detail) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or(""));
    let detail: u32 = detail.parse().unwrap_or(0);
    match (subject, detail) {
        // sisimai's own codes for a reason (5.0.9xx)
        ("0", 901) => Reason::OnHold,
        ("0", 902) => Reason::SyntaxError,
        ("0", 909) => Reason::NoRelaying,
        ("0", 910 | 924) => Reason::Filtered,
        ("0", 911) => Reason::UserUnknown,
        ("0", 912) => Reason::HostUnknown,
        ("0", 916) => Reason::HasMoved,
        ("0", 918) => Reason::Rejected,
        ("0", 921) => Reason::Suspend,
        ("0", 922) => Reason::MailboxFull,
        ("0", 923) => Reason::ExceedLimit,
        ("0", 930) => Reason::SystemError,
        ("0", 931) => Reason::SystemFull,
        ("0", 932) => Reason::NotAccept,
        ("0", 934) => Reason::MesgTooBig,
        ("0", 939) => Reason::MailerError,
        ("0", 944) => Reason::NetworkError,
        ("0", 945) => Reason::TooManyConn,
        ("0", 947) => Reason::Expired,
        ("0", 960) => Reason::ContentError,
        ("0", 970) => Reason::SecurityError,
        ("0", 971) => Reason::Blocked,
        ("0", 972) => Reason::PolicyViolation,
        ("0", 980) => Reason::SpamDetected,
        ("1", 1 | 0 | 3 | 4 | 5) => Reason::UserUnknown,
        ("1", 2) => Reason::HostUnknown,
        ("1", 6) => Reason::HasMoved,
        ("1", 7 | 8) => Reason::Rejected,
        ("1", 10) => Reason::NotAccept,
        ("2", 1) => Reason::Suspend,
        ("2", 2) => Reason::MailboxFull,
        ("2", 3) => Reason::ExceedLimit,
        ("2", 4) => Reason::MailerError,
        ("2", _) => Reason::Filtered,
        ("3", 1) => Reason::SystemFull,
        ("3", 4) => Reason::MesgTooBig,
        ("3", _) => Reason::SystemError,
        ("4", 4) => Reason::HostUnknown,
        ("4", 7) => Reason::Expired,
        ("4", _) => Reason::NetworkError,
        ("5", _) => Reason::SyntaxError,
        ("6", _) => Reason::ContentError,
        ("7", 1) => Reason::Blocked,
        ("7", 13) => Reason::Suspend,
        ("7", 25) => Reason::RequirePtr,
        ("7", 23..=27) => Reason::AuthFailure,
        ("7", _) => Reason::SecurityError,
        _ => Reason::Undefined,
    }
}

/// Statuses that say more than any wording: they decide before the phrases do.
fn decisive(status: &str) -> Option<Reason> {
    let r = match status.get(2..)? {
        "1.7" | "1.8" => Reason::Rejected,
        "1.2" => Reason::HostUnknown,
        "1.6" => Reason::HasMoved,
        "1.10" => Reason::NotAccept,
        "2.2" => Reason::MailboxFull,
        "3.4" => Reason::MesgTooBig,
        "4.7" => Reason::Expired,
        "7.13" => Reason::Suspend,
        "7.25" => Reason::RequirePtr,
        "7.23" | "7.24" | "7.26" | "7.27" => Reason::AuthFailure,
        _ if status.get(2..4) == Some("0.") && status.len() == 7 => by_status(status),
        _ => return None,
    };
    Some(r)
}

/// The reason for one failed recipient from what the bounce says. Pure, linear in the input.
pub fn classify(
    status: Option<&str>,
    reply_code: Option<u16>,
    diagnostic: &str,
    action: Option<&str>,
) -> Reason {
    match action.map(str::to_ascii_lowercase).as_deref() {
        Some("delivered" | "relayed" | "expanded") => return Reason::Delivered,
        Some("delayed") => return Reason::Expired,
        Some(_) | None => {}
    }
    if let Some(r) = status.and_then(decisive) {
        return r;
    }
    let text = diagnostic.to_ascii_lowercase();
    let temporary = status.is_some_and(|s| s.starts_with('4'));
    for (reason, phrases) in PHRASES {
        if phrases.iter().any(|p| text.contains(p)) {
            return match reason {
                // a DNS answer that may change ("try again", 4xx) is a network problem
                Reason::HostUnknown if temporary || text.contains("try again") => {
                    Reason::NetworkError
                }
                r => *r,
            };
        }
    }
    let by_code = status.map(by_status).unwrap_or_default();
    if by_code != Reason::Undefined && status.is_some_and(|s| !s.ends_with(".0.0")) {
        return by_code;
    }
    // failed with a temporary status and nothing said why: retried until given up
    if action.is_some_and(|a| a.eq_ignore_ascii_case("failed")) && temporary {
        return Reason::Expired;
    }
    match reply_code {
        Some(552) => Reason::MailboxFull,
        Some(550 | 551 | 553) => Reason::UserUnknown,
        Some(554) => Reason::Rejected,
        Some(_) | None => by_code,
    }
}
