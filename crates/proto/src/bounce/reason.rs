//! Reason classes of a failed delivery, and the rules that choose one from the remote server's
//! words, the RFC 3463 status, the SMTP reply code and the RFC 3464 action.
//!
//! Responsible for: [`Reason`] (a closed set; the names are sisimai's, so results compare with
//! that project's labels), whether a reason is a hard bounce ([`Reason::is_hard`]), and
//! [`classify`]. The rules follow the shape of sisimai's: a first round of classes that either
//! the status code or a specific phrase decides, then (when the status says nothing specific) a
//! second round of phrases, then the status code's class, the reply code, the action.
//! Not responsible for: finding those inputs in a message (the parser), nor for what the
//! parser knows and [`classify`] does not (which SMTP command was refused, which software wrote
//! the bounce): the parser adjusts for those itself.
//!
//! Pure: no I/O, no clock. [`classify`] never panics and is linear in the diagnostic's length
//! (one lower-casing pass, then a fixed set of substring searches).

use super::matcher::PhraseSet;
use aho_corasick::{AhoCorasick, MatchKind};
use std::sync::OnceLock;

macro_rules! reasons {
    ($($(#[$doc:meta])* $v:ident = $name:literal,)*) => {
        /// Why a delivery failed. Closed set; names as sisimai writes them ([`Reason::as_str`]).
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
    /// No reason could be told (nothing to go on).
    #[default]
    Undefined = "undefined",
    /// The mailbox (local part) does not exist.
    UserUnknown = "userunknown",
    /// The mailbox is full (over quota).
    MailboxFull = "mailboxfull",
    /// The message is larger than the server or mailbox takes.
    MesgTooBig = "mesgtoobig",
    /// A per-mailbox limit was exceeded (RFC 3463 X.2.3: message length, header size).
    ExceedLimit = "exceedlimit",
    /// The recipient's domain or host does not exist.
    HostUnknown = "hostunknown",
    /// Our IP address or domain is refused or listed (blocklist, client host rejected).
    Blocked = "blocked",
    /// Our IP address or domain has a bad reputation with the receiver.
    BadReputation = "badreputation",
    /// Our IP address has no (matching) reverse DNS.
    RequirePtr = "requireptr",
    /// SPF, DKIM or DMARC failed for the message.
    AuthFailure = "authfailure",
    /// The message was judged spam.
    SpamDetected = "spamdetected",
    /// The message carried a virus or malware.
    VirusDetected = "virusdetected",
    /// The content or format of the message (headers, MIME, 8-bit data) was refused.
    ContentError = "contenterror",
    /// Refused by the receiver's policy (not spam, not security).
    PolicyViolation = "policyviolation",
    /// Refused by a security rule (authentication or encryption required, not authorized).
    SecurityError = "securityerror",
    /// The sender (envelope or header From) was rejected.
    Rejected = "rejected",
    /// The recipient exists but its filter refused this sender or message.
    Filtered = "filtered",
    /// The receiver does not relay for us.
    NoRelaying = "norelaying",
    /// The domain accepts no mail (null MX, RFC 7505) or the host takes none.
    NotAccept = "notaccept",
    /// The mailbox is disabled or suspended.
    Suspend = "suspend",
    /// The recipient has moved away and there is no forwarding address.
    HasMoved = "hasmoved",
    /// Delivery was given up after retrying for too long.
    Expired = "expired",
    /// A network, DNS or routing failure (including mail loops).
    NetworkError = "networkerror",
    /// The receiving system failed or is misconfigured.
    SystemError = "systemerror",
    /// The receiving system is out of disk space.
    SystemFull = "systemfull",
    /// A local delivery program (pipe, procmail) failed.
    MailerError = "mailererror",
    /// Too many connections or recipients at once.
    TooManyConn = "toomanyconn",
    /// Rate-limited: too many messages too fast.
    Speeding = "speeding",
    /// The message does not comply with RFC 5322 (duplicate or multiple headers).
    NotCompliantRfc = "notcompliantrfc",
    /// An SMTP syntax or sequence error.
    SyntaxError = "syntaxerror",
    /// STARTTLS failed or was required.
    FailedStartTls = "failedstarttls",
    /// The bounce says too little to tell why.
    OnHold = "onhold",
    /// An automatic reply (vacation, out of office).
    Vacation = "vacation",
    /// A feedback-loop (abuse, opt-out) report.
    Feedback = "feedback",
    /// Delivered after all (a success report).
    Delivered = "delivered",
}

impl Reason {
    /// The class named `s` (as [`Reason::as_str`] writes it).
    pub fn from_name(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// A permanent failure by its nature (sisimai's "hardbounce"): the address or the domain
    /// itself is wrong (userunknown, hostunknown, hasmoved), or the domain takes no mail
    /// (notaccept, unless the server said so with a temporary 4xx). Everything else may pass
    /// on a later try or with another message.
    pub fn is_hard(self, status: Option<&str>, reply_code: Option<u16>) -> bool {
        match self {
            Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved => true,
            Reason::NotAccept => !is_temporary(status, reply_code),
            Reason::Undefined
            | Reason::MailboxFull
            | Reason::MesgTooBig
            | Reason::ExceedLimit
            | Reason::Blocked
            | Reason::BadReputation
            | Reason::RequirePtr
            | Reason::AuthFailure
            | Reason::SpamDetected
            | Reason::VirusDetected
            | Reason::ContentError
            | Reason::PolicyViolation
            | Reason::SecurityError
            | Reason::Rejected
            | Reason::Filtered
            | Reason::NoRelaying
            | Reason::Suspend
            | Reason::Expired
            | Reason::NetworkError
            | Reason::SystemError
            | Reason::SystemFull
            | Reason::MailerError
            | Reason::TooManyConn
            | Reason::Speeding
            | Reason::NotCompliantRfc
            | Reason::SyntaxError
            | Reason::FailedStartTls
            | Reason::OnHold
            | Reason::Vacation
            | Reason::Feedback
            | Reason::Delivered => false,
        }
    }
}

/// The status (or, without one, the reply code) is of class 4: temporary.
fn is_temporary(status: Option<&str>, reply_code: Option<u16>) -> bool {
    match status.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => s.starts_with('4'),
        None => reply_code.is_some_and(|c| c / 100 == 4),
    }
}

// ---------------------------------------------------------------------------------------------
// Phrase tables. Each entry is lower-case with single spaces (the diagnostic is normalised the
// same way); an entry with `…` in it matches when its pieces occur in that order, anything
// between them. Drawn from the wording sisimai's reason rules recognise (its Sisimai::Reason::*
// classes) and from the bounces of its corpus.
// ---------------------------------------------------------------------------------------------

/// The mailbox is over quota.
const MAILBOX_FULL: &[&str] = &[
    "mailbox full",
    "mailbox is full",
    "mailfolder is full",
    "full mailbox",
    "mailbox…full",
    "mailbox…quota",
    "maildir…quota",
    "over…quota",
    "quota…exceeded",
    "disk…quota",
    "account is…quota",
    "quota violation for",
    "storage quota",
    "exceeded storage allocation",
    "mailbox exceeds allowed size",
    "mailbox size limit exceeded",
    "mailbox would exceed maximum allowed storage",
    "mailbox…exceeded…limit",
    "messages in recipient's mailbox exceeded",
    "enough…space",
    "insufficient disk space",
    "not sufficient disk space",
    "no space left on device",
    "out of storage space",
    "user's space has been used up",
    "user has too many messages on the server",
    "too much mail data",
    "boite du destinataire pleine",
    "account disabled temporarly for exceeding receiving limits",
];

/// The message is too large.
const MESG_TOO_BIG: &[&str] = &[
    "message too big",
    "message file too big",
    "message too large for this ",
    "max message size exceeded",
    "message size exceeds fixed limit",
    "message size exceeds fixed maximum message size",
    "message size exceeds maximum value",
    "message length exceeds administrative limit",
    "exceeded maximum inbound message size",
    "exceeded the maximum incoming message size",
    "size limit",
    "line limit exceeded",
    "taille limite du message atteinte",
];

/// A per-mailbox or header limit.
const EXCEED_LIMIT: &[&str] = &[
    "message header size exceeds limit",
    "message too large",
    "exceeds limit set by recipient",
    "recipsizelimit",
];

/// The mailbox is disabled or suspended.
const SUSPEND: &[&str] = &[
    " is currently suspended",
    "has been suspended",
    "mailbox currently suspended",
    "user suspended",
    "recipient suspend the service",
    " temporary locked",
    "account is locked",
    "account is disabled",
    "account has been disabled",
    "account that you tried to reach is disabled",
    "account that you tried to reach is inactive",
    "disabled recipient address",
    "user account disabled",
    "mailbox disabled",
    "this mailbox is disabled",
    "user or domain is disabled",
    "mailbox is frozen",
    "inactive account",
    "invalid/inactive user",
    "is a deactivated mailbox",
    "temporarily inactive",
    "user is terminated",
    "archived recipient",
    "boite du destinataire archivee",
    "recipient account is blocked",
    "mailbox unavailable or access denied",
];

/// The recipient moved away.
const HAS_MOVED: &[&str] = &[
    " has been replaced by ",
    "mailbox has moved",
    "recipient no longer on server",
];

/// The server does not relay.
const NO_RELAYING: &[&str] = &[
    "relay access denied",
    "relaying denied",
    "relay denied",
    "relay not permitted",
    "no relaying",
    "as a relay",
    "insecure mail relay",
    "unable to relay ",
    "relaying mail to ",
    "not allowed to relay through this machine",
    "not permitted to relay through this server without authentication",
    "this system is not configured to relay mail",
    "not an open relay, so get lost",
    "that domain isn't in my list of allowed rcpthost",
    "we don't handle mail for",
    "specified domain is not allowed",
    "not local host",
    "not a gateway",
    "email address is not verified.",
    "requires authentication when attempting to send to a non-local e-mail address",
];

/// SPF, DKIM or DMARC failed.
const AUTH_FAILURE: &[&str] = &[
    "dmarc policy",
    "does not pass dmarc",
    "dmarc check failed",
    "bad spf records for",
    "//spf.pobox.com",
    "spf check: fail",
    "please inspect your spf settings",
    "is not allowed to send from <…per it's spf record",
    "sender policy framework (spf) fail",
    "sender policy framework violation",
    "spf (sender policy framework) domain authentication fail",
    "fails to pass spf checks",
    "authentication checks failed",
    "fails to pass authentication checks",
    "the sender is unauthenticated",
    "unauthenticated email",
    "doesn't meet the required authentication level",
    "doesn't meet the authentication requirements",
    "does not have authentication information",
    " is not allowed to send mail.…_401",
];

/// The mailbox does not exist.
const USER_UNKNOWN: &[&str] = &[
    "user unknown",
    "unknown user",
    "user not found",
    "user not known",
    "user not exist",
    "user not active",
    "user does not exist",
    "user…does not exist",
    "user…was not found",
    "user (…) unknown",
    "no such user",
    "no such mailbox",
    "no such recipient",
    "no such person at this address",
    "no such address here",
    "unknown recipient",
    "unknown mailbox",
    "unknown local…part",
    "unknown e…mail address",
    "unknown or illegal",
    "recipient unknown",
    "recipient not found",
    "recipient not exist",
    "recipient not ok",
    "recipient does not exist",
    "recipient is not local",
    "recipient…was not found in",
    "recipientnotfound",
    "recipnotfound",
    "recipient notfound",
    "invalid recipient",
    "invalid mailbox",
    "invalid address",
    "invalid final delivery userid",
    "inactive email address",
    "address unknown",
    "address does not exist",
    "address not present in directory",
    "email address does not exist",
    "email address could not be found",
    "email account that you tried to reach does not exist",
    "mailbox does not exist",
    "mailbox…does not exist",
    "mailbox not found",
    "mailbox not present",
    "mailbox invalid",
    "mailbox is inactive",
    "mailbox is unavailable",
    "mailbox unavailable",
    "no mailbox",
    "no mail box available for this user",
    "no account by that name here",
    "not a valid recipient",
    "not a valid user here",
    "not a valid mailbox",
    "not a known user",
    "not a local address",
    "not an active address at this host",
    "not listed in public name & address book",
    "not listed in domino directory",
    "(and other recipients in the same domain)",
    "address couldn't be found",
    "there is no one at this address",
    "this address no longer accepts mail",
    "no longer valid",
    "is not a registered user",
    "this user doesn't have a…account",
    "bad…recipient",
    "badrcptto",
    "badrecipientto",
    "not in my validrcptto list",
    "destination addresses were unknown",
    "destination server rejected recipients",
    "non…existent user",
    "nonexistent user",
    "can't accept user",
    "no valid recipients, bye",
    "no valid recipients for ",
    "user missing home directory",
    "recipient address rejected: access denied",
    "recipient address rejected: invalid",
    "recipient address rejected.",
    "recipient refuses to accept your mail",
    "recipient is not accepted",
    "rcpt <…does not exist",
    "<…> not found",
    "account…does not exist at the organization",
    "sorry, your envelope recipient has been denied",
    "that domain or user isn't in my list of allowed rcpthosts",
    "the following recipients was undeliverable",
    "the user's email name is not found",
    "vdeliver: invalid or unknown virtual user",
    "5.1.0 address rejected",
    "550 address invalid",
    "#5.1.1 bad address",
    "does not exist.",
    "utilisateur inconnu",
    "destinataire invalide",
    "nessun utente simile in questo indirizzo",
    "no existe dicha persona",
    "no existe ese usuario",
    "weil die adresse nicht gefunden wurde",
];

/// The mailbox exists but its filter refused (or the status says X.2.x and the words say
/// "unknown").
const FILTERED: &[&str] = &[
    "message filtered",
    "account is protected by",
    "bounced address",
    "has restricted sms e-mail",
    "is not accepting any mail",
    "message rejected due to user rules",
    "not found recipient account",
    "recipient id refuse to receive mail",
    "is only accepting mail from specific email addresses",
    "refused due to recipient preferences",
    "user refuses to receive this mail",
    "user reject",
    "you have been blocked by the recipient",
    // au (ezweb.ne.jp)'s per-user domain filter answers "user unknown" without an address
    "550 : user unknown",
    "550: : user unknown",
];

/// Our IP address has no (matching) reverse DNS.
const REQUIRE_PTR: &[&str] = &[
    "no ptr record",
    "ptr record setup",
    "missing ptr records",
    "bad dns ptr resource record",
    "must have a ptr record",
    "reverse dns failed",
    "reverse dns required",
    "reverse dns validation failed",
    "fix reverse dns for ",
    "custom reverse dns name",
    "servers/devices with no reverse dns",
    "generic dns ptr-records",
    "reverse dns lookup for host…failed permanently",
    "sender ip reverse lookup rejected",
    "ip name lookup failed",
    "cannot find your hostname",
    "cannot resolve your address.",
    "unresolvable relay host name",
    "forward dns entry does not point to the sending ip",
    "domain…mismatches client ip",
    "dns lookup failure:…try again later",
    "forbidden by invalid rdns record",
    "service permits…unverifyable sending ips",
    "connections not accepted from servers without a valid sender domain",
];

/// The message breaks RFC 5322.
const NOT_COMPLIANT: &[&str] = &[
    "not rfc 5322 compliant",
    "rfcmessagenoncompliant",
    "duplicate header",
    " multiple … header",
    "multiple addresses in from:",
];

/// Our IP address or domain has a poor reputation.
const BAD_REPUTATION: &[&str] = &[
    "reputation score",
    "rate limited due to ip reputation",
    "ip/domain reputation problems",
    "very low reputation",
    "none/bad reputation",
    "poor reputation",
    "temporarily deferred due to unexpected volume or user complaints",
];

/// The message's format or media was refused.
const CONTENT_ERROR: &[&str] = &[
    "header size exceeds maximum permitted",
    "headers too large",
    "improper use of 8-bit data in message header",
    "message header size, or recipient list, exceeds policy limit",
    "message mime complexity exceeds the policy maximum",
    "too many received: headers",
    "invalid mime headers",
    "improperly-formatted binary content",
    "unnecessary base64 encoding",
    "media error",
];

/// The sender was rejected.
const REJECTED: &[&str] = &[
    "sender rejected",
    "sender was rejected",
    "sender address rejected",
    "sender email address rejected",
    "address rejected",
    "domain of sender address ",
    "sender verify failed",
    "invalid sender",
    "unroutable sender address",
    "sender domain is empty",
    "sender is in my black list",
    "sender is spammer",
    "sender not pre-approved",
    "sender address has been blacklisted",
    "your email address has been blacklisted",
    "an address that has been blacklisted",
    "access denied (sender blacklisted)",
    "access denied (in reply to mail from command)",
    "administrative prohibition",
    "bogus mail from",
    "null sender is not allowed",
    "empty envelope senders not allowed",
    "syntax error: empty email address",
    "fully qualified email address required",
    "can't determine purported responsible address",
    "mail from not owned by user",
    "from: domain is invalid",
    "is not a registered gateway user",
    "emetteur invalide",
    "envelope blocked - ",
    "does not exist e2110",
    "batv failed to verify",
    "batv validation failure",
    "batv: no tag",
    "rejected by batv defense",
    "invalid or expired email address",
    "isn't on the recipient's list of senders to accept mail from",
    "this server does not accept mail from",
    "returned mail not accepted here",
    "error: no third-party dsns",
    "unsigned dsn for",
    "denied [bouncedeny]",
    "valid-address-filter",
    "email address is on senderfilterconfig list",
    "rule imposed mailbox access for",
    "spam reporting address",
    "delivery not authorized, message refused",
    "recipient addresses rejected : access denied",
    "invalid domain, see <url:",
    "mx records for ",
    "recursive cname records for",
    "you are not allowed to post to this mailing list",
    "you are not a member of this mailing list",
    "groups.google.com/support",
    "permission to post",
    "sending this from a different address or alias using the ",
];

/// Words that look like a refused sender but speak of the recipient or our IP.
const REJECTED_NOT: &[&str] = &[
    "5.1.0 address rejected",
    "recipient address rejected",
    "sender ip address rejected",
];

/// The recipient's domain does not exist.
const HOST_UNKNOWN: &[&str] = &[
    "host unknown",
    "unknown host",
    "host or domain name not found",
    "illegal host/domain name found",
    "domain does not exist",
    "domain must exist",
    "domain is not reachable",
    "no such domain",
    "unknown domain name",
    "name or service not known",
    "mail domain mentioned in email address is unknown",
    "the account or domain may not exist",
    "unroutable address",
    "unrouteable address",
    "host unreachable",
    "couldn't find any host named",
    "host…not found",
    "553 …does not exist",
];

/// The message was judged spam.
const SPAM: &[&str] = &[
    " - spam",
    "spam detected",
    "spam blocked",
    "spam check",
    "spam email",
    "spam not accepted",
    "spam refused",
    "spam rejection",
    "spam score ",
    "spam message rejected",
    "spam content matched",
    "spamming not allowed",
    "scored as spam",
    "classified as spam",
    "detected as spam",
    "identified as spam",
    "considered spam",
    "probably spam",
    "probable spam",
    "high probability of spam",
    "looks like spam",
    "looked like spam",
    "appears to be spam",
    "seems to be a spam",
    "similar to spam",
    "may consider spam",
    "spam-like",
    "spam or virus",
    "spam/virus",
    "rejected as spam",
    "rejected due to spam…classification",
    "rejected due to spam…content",
    "spam classification",
    "spam…exceeded",
    "rejected by…(spam)",
    "spamassassin",
    "spambouncer",
    "spamprofiler",
    "antispam checks",
    "anti spam engine",
    "too many spam complaints",
    "too much spam.",
    "we dont accept spam",
    "unsolicited",
    "bulk email",
    "bulk mail",
    "bulk.advertising",
    "content rejected",
    "content filter rejection",
    "unacceptable content",
    "rejecting mail content",
    "rejecting banned content",
    "mail content denied",
    "message rejected for policy reasons",
    "blacklisted url in message",
    "uribl",
    "recurrent pattern detection system",
    "this message is likely suspicious",
    "our system has detected that this message is ",
    "message has been temporarily blocked by our filter",
    "message filtered. please see the faqs section on spam",
    "message filtered. refer to the troubleshooting page at ",
    "554 5.7.0 reject, id=",
    "mail score (…over ",
    "this message scored…spam points",
    "percent probability of being spam",
    "mail rejete. mail rejected.…506",
    "greylisted…please try again in",
    "rule imposed as…is blacklisted on",
    "sender domain listed at ",
    "denied due to spam list",
    "listed in work.drbl.imedia.ru",
    "help_spam_16.htm",
];

/// Rate-limited.
const SPEEDING: &[&str] = &[
    "temporarily rate limited",
    "please try again slower",
    "receiving mail at a rate that prevents additional messages",
    "sent to too many recipients this hour",
];

/// Too many connections (or recipients) at once.
const TOO_MANY_CONN: &[&str] = &[
    "too many connections",
    "too many concurrent smtp connections",
    "too many smtp sessions for this host",
    "too many recipients",
    "too many errors from your ip",
    "connection rate limit exceeded",
    "connection frequency limited",
    "ip frequency limited",
    "maximum connection limit",
    "per-domain connection limit",
    "max emails per hour",
    "throttling failure",
    "trop de connexions",
    "we have already made numerous attempts to deliver this message",
];

/// Our IP address or domain was refused.
const BLOCKED: &[&str] = &[
    "blocked using ",
    "blocked - see http",
    "blocked by ldap",
    "blocked for abuse",
    " said: 550 blocked",
    "was blocked by ",
    "blacklisted by",
    "blacklisted",
    "is in a black list",
    "block list",
    "banned sending ip",
    "bad sender ip address",
    "sender ip address rejected",
    "invalid ip for sending mail of domain",
    "client host rejected: may not be mail exchanger",
    "client host rejected: was not authenticated",
    "client host rejected: abus detecte",
    "client host blocked",
    "adresse ip source bloquee",
    "dnsbl",
    "spamcop.net/bl.",
    "spamhaus",
    "abuseat.org",
    "barracudacentral.org",
    "is in an…rbl on ",
    "ip is in spamhaus",
    "your ip address is listed in the rbl",
    "is blocked by rbl",
    "is blocked by earthlink",
    "ips blocked",
    "dynamic ip",
    "extreme bad ip profile",
    "listed as abusive",
    "your network is temporary blacklisted",
    "part of their network is on our block list",
    "not currently accepting mail from your ip",
    "server access forbidden by your ip ",
    "access from ip address…blocked",
    "your access ip…has been rejected",
    "mail server at…is blocked",
    "messages from…weren't sent",
    "messages from…temporarily deferred due to user complaints",
    "message from…rejected based on blacklist",
    "no access from mail server",
    "you are not allowed to connect",
    "rejecting open proxy",
    "you are sending spam",
    "currently sending spam see: ",
    "too many spams from your ip",
    "too many unwanted messages have been sent from the following ip address",
    "remotehost looks suspiciously like spammer",
    "your server requires confirmation",
    "confirm this mail server",
    "please use the smtp server of your isp",
    "but my name was rejected",
    "has not passed validation",
    "to submit messages to this e-mail system has been rejected",
    "smtp error from remote mail server after initial connection:",
    "esmtp not accepting connections",
    "service not available, closing transmission channel",
    "connection refused by",
    "connection reset by peer",
    "connection dropped",
    "connection was dropped by remote host",
    "helo command rejected:",
    "is not allowed to send mail from",
    "mail from…refused",
    "go away",
    "error: no valid recipients from ",
    "sorry, that domain isn't in my list of allowed rcpthosts",
    "no matches to nameserver query",
    "daily relay quota",
    "refused to talk to me:…blocked",
    "service refused, please try later.…103",
    "service refused, please try later.…510",
    "refused - see http",
    "rejected - multi-blacklist",
];

/// A virus or malware was found.
const VIRUS: &[&str] = &[
    "virus detected",
    "infected with a virus",
    "prohibited virus or spam content",
    "used by recent viruses or other malware",
    "potentially executable attachment",
    "malicious_url detected",
    "email rejected due to security policies",
];

/// The receiver's policy refused the message.
const POLICY: &[&str] = &[
    "local policy violation",
    "protocol violation",
    "denied by policy",
    "for policy reasons",
    "organizational settings",
    "organization policy",
    "message rejected due to local policy",
    "header error",
    "header are not accepted",
    "messages with multiple addresses",
    "content presents a potential",
    "an illegal attachment on your message",
    "messages containing images or other attachments",
    "recipient is not accepting mail with ",
    "message given low priority",
    "by non-member to a members-only list",
    "closed mailing list",
    "is not subscribed to this group",
    "you're using a mass mailer",
    "host network not allowed",
    "allowable number of posts without solving a captcha",
];

/// The receiving system failed.
const SYSTEM_ERROR: &[&str] = &[
    "internal system error",
    "internal error reading data",
    "internal server error",
    "local configuration error",
    "local error in processing",
    "mail system configuration error",
    "server configuration error",
    "system config error",
    "remote server is misconfigured",
    "temporary local problem",
    "queue file write error",
    "can't create user output file",
    "could not load drd for domain",
    "interrupted system call",
    "it encountered an error while being processed",
    "aliasing/forwarding loop broken",
    "it would create a mail loop",
    "loop was found in the mail exchanger",
    "loops back to myself",
    "recipient deferred because there is no mdb",
    "service currently unavailable",
    "timeout waiting for input",
    "transaction failed",
    "duplicated message-id",
    "unable to contact ldap server",
    "insufficient permission",
    "unable to connect…daemon",
];

/// A network, DNS or routing failure.
const NETWORK: &[&str] = &[
    "host name lookup failure",
    "host not found, try again",
    "malformed name server reply",
    "malformed or unexpected name server reply",
    "dns records for the destination computer could not be found",
    "no relevant answers",
    "responded with code nxdomain",
    "unable to resolve route ",
    "unrouteable mail domain",
    "no route to host",
    "dns query failed",
    "host is unreachable",
    "could not connect and send the mail to",
    "lost connection with",
    "network error",
    "too many hops",
    "hop count exceeded",
    "maximum hop count exceeded",
    "routing loop",
    "mail forwarding loop for ",
    "maximum forwarding loop count exceeded",
    "message looping",
];

/// The receiving system is out of space.
const SYSTEM_FULL: &[&str] = &[
    "mail system full",
    "requested mail action aborted: exceeded storage allocation",
];

/// The domain accepts no mail.
const NOT_ACCEPT: &[&str] = &[
    "null mx",
    "nullmx",
    "host/domain does not accept mail",
    "host does not accept mail",
    "domain does not accept mail",
    "mail for this domain is not accepted",
    "doesn't receive email",
    "mail receiving disabled",
    "indicated no smtp service",
    "no mx record found for domain",
    "no mx found for domain",
    "couldn't find a mail exchanger",
    "no route for current request",
    "not accepting network messages",
    "smtp protocol returned a permanent error",
];

/// Delivery was given up after retrying.
const EXPIRED: &[&str] = &[
    "delivery expired",
    "delivery time expired",
    "envelope expired",
    "message expired",
    "message timed out",
    "connection timed out",
    "timed out",
    "retry timeout exceeded",
    "retry time not reached for any host after a long failure period",
    "have been failing for a long time",
    "has been delayed",
    "message will be retried",
    "delivery attempts will continue to be",
    "giving up on",
    "could not deliver for the last",
    "could not find a gateway for",
    "failed to deliver to domain ",
    "this message has been in the queue too long",
    "was not reachable within the allowed queue period",
    "unable to deliver message after multiple retries",
    "unable to deliver this message after",
    "your message could not be delivered for more than",
    "could not be delivered for…days",
    "was not delivered within",
    "it has not been collected after",
    "server did not respond",
    "did not accept our requests to connect",
    "unable to connect successfully to the destination mail server",
    "host not reachable",
    "delivery failed…attempts",
];

/// An address or command the server could not read.
const SYNTAX_ERROR: &[&str] = &["malformed address"];

/// STARTTLS failed.
const STARTTLS: &[&str] = &[
    "starttls is required to send mail",
    "tls required but not supported",
    "does not support tls",
];

/// A security rule refused the message.
const SECURITY: &[&str] = &[
    "authentication required",
    "authentication is required",
    "authrequired",
    "authentication credentials invalid",
    "authentication failure",
    "authentication failed; server…said: ",
    "smtp authentication",
    "authentication turned on in your email client",
    "unauthenticated senders not allowed",
    "you don't authenticate",
    "verification failure",
    "account not subscribed to ses",
    "is not authorized to perform ses:sendrawemail",
    "executable files are not allowed in compressed files",
    "insecure mail relay",
    "is a dead domain",
    "authentification invalide…305",
    "authentification requise…402",
    "delivery not authorized",
];

/// A local delivery program failed.
const MAILER_ERROR: &[&str] = &[
    "mailer error",
    "pipe to |/",
    "procmail: ",
    "bin/procmail",
    "bin/maidrop",
    "command failed: ",
    "command died with status ",
    "command output:",
    " || exit ",
    "x-unix; ",
    "operating system error",
];

/// An automatic reply.
const VACATION: &[&str] = &[
    "i am away",
    "i am currently away",
    "i am out of the office",
    "i'm out of the office",
    "out of office",
    "i will be traveling for work",
];

/// A feedback-loop report's own description.
const FEEDBACK: &[&str] = &[
    "abuse report for an email message",
    "opt-out report for an email message",
    "authentication failure report for an email message",
    "authentication-failure report for an email message",
    "email abuse complaint",
    "sent this email to unsubscribe",
];

// ---------------------------------------------------------------------------------------------
// Providers' own error codes, quoted in their refusals; each names a reason more precisely than
// the status does (after sisimai's Sisimai::Rhost::* tables and the providers' pages).
// ---------------------------------------------------------------------------------------------

/// Orange and La Poste (`OFR_506`, `LPN007_426`, `OFR005_505`): the last three digits.
const ORANGE_CODES: &[(u16, Reason)] = &[
    (101, Reason::Blocked),
    (102, Reason::Blocked),
    (103, Reason::Blocked),
    (104, Reason::TooManyConn),
    (305, Reason::SecurityError),
    (401, Reason::AuthFailure),
    (402, Reason::SecurityError),
    (403, Reason::Rejected),
    (405, Reason::Rejected),
    (415, Reason::Rejected),
    (416, Reason::UserUnknown),
    (417, Reason::MailboxFull),
    (418, Reason::UserUnknown),
    (420, Reason::Suspend),
    (421, Reason::Rejected),
    (426, Reason::Suspend),
    (505, Reason::SystemError),
    (506, Reason::SpamDetected),
    (510, Reason::Blocked),
    (514, Reason::MesgTooBig),
    (517, Reason::AuthFailure),
    (630, Reason::PolicyViolation),
    (999, Reason::Blocked),
];

/// The prefixes of Orange's and La Poste's codes, longest first.
const ORANGE_PREFIXES: &[&str] = &["lpnaaa", "lpn", "ofr", "ouk"];

/// Cox (`AUP#CXBL`, lower-cased).
const COX_CODES: &[(&str, Reason)] = &[
    ("cxbl", Reason::Blocked),
    ("cxthrt", Reason::SecurityError),
    ("cxmj", Reason::SecurityError),
    ("cxdns", Reason::Blocked),
    ("cxsndr", Reason::Rejected),
    ("cxsmtp", Reason::Rejected),
    ("cxcnct", Reason::TooManyConn),
    ("cxmxrt", Reason::TooManyConn),
    ("cdrbl", Reason::Blocked),
    ("ipbl0001", Reason::Blocked),
    ("ipbl0010", Reason::Blocked),
    ("ipbl0011", Reason::Blocked),
    ("ipbl0100", Reason::Blocked),
    ("ipbl0101", Reason::Blocked),
    ("ipbl0110", Reason::Blocked),
    ("ipbl0111", Reason::Blocked),
    ("ipbl1000", Reason::Blocked),
    ("ipbl1001", Reason::Blocked),
    ("ipbl1010", Reason::Blocked),
    ("ipbl1011", Reason::Blocked),
    ("ipbl1100", Reason::Blocked),
    ("ipbl1101", Reason::Blocked),
    ("ipbl1110", Reason::Blocked),
    ("ipbl1111", Reason::Blocked),
    ("ipbl00001", Reason::Blocked),
    ("urlbl011", Reason::SpamDetected),
    ("urlbl101", Reason::SpamDetected),
    ("urlbl110", Reason::SpamDetected),
    ("urlbl1001", Reason::SpamDetected),
];

/// Spectrum (`AUP#In-1310`, `AUP#O-1000`): ranges of the four-digit number, inclusive.
const SPECTRUM_CODES: &[(u16, u16, Reason)] = &[
    (1000, 1000, Reason::Blocked),
    (1010, 1080, Reason::Rejected),
    (1090, 1090, Reason::SystemError),
    (1100, 1150, Reason::Blocked),
    (1160, 1190, Reason::PolicyViolation),
    (1200, 1250, Reason::Blocked),
    (1260, 1260, Reason::NetworkError),
    (1300, 1490, Reason::TooManyConn),
    (1500, 1520, Reason::Rejected),
    (1530, 1530, Reason::MesgTooBig),
    (1540, 1550, Reason::TooManyConn),
    (1560, 1560, Reason::PolicyViolation),
];

/// A provider's own code in the (normalised) text, if it names a reason.
fn provider_code(text: &str) -> Option<Reason> {
    aup_code(text).or_else(|| orange_code(text))
}

/// Cox's or Spectrum's `AUP#...` code.
fn aup_code(text: &str) -> Option<Reason> {
    let (_, after) = text.split_once("aup#")?;
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(after.len());
    let code = &after[..end];
    if let Some((_, r)) = COX_CODES.iter().find(|(c, _)| *c == code) {
        return Some(*r);
    }
    let digits = code.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '-');
    let number: u16 = digits.get(..4)?.parse().ok()?;
    SPECTRUM_CODES
        .iter()
        .find(|(low, high, _)| (*low..=*high).contains(&number))
        .map(|(_, _, r)| *r)
}

/// Orange's or La Poste's code: a prefix, then `_NNN` or `NNN_NNN` (or `NNN-NNN`), standing
/// as a word of its own.
fn orange_code(text: &str) -> Option<Reason> {
    let bytes = text.as_bytes();
    let word_edge = |i: usize| bytes.get(i).is_none_or(|b| !b.is_ascii_alphanumeric());
    for (at, _) in text.match_indices(['o', 'l']) {
        if at > 0 && !word_edge(at - 1) {
            continue;
        }
        let Some(prefix) = ORANGE_PREFIXES.iter().find(|p| text[at..].starts_with(**p)) else {
            continue;
        };
        let rest = &bytes[at + prefix.len()..];
        let digits = |r: &[u8]| r.len() >= 3 && r[..3].iter().all(u8::is_ascii_digit);
        let code_at = match rest {
            [b'_', tail @ ..] if digits(tail) => 1,
            [_, _, _, b'_' | b'-', tail @ ..] if digits(rest) && digits(tail) => 4,
            _ => continue,
        };
        if !word_edge(at + prefix.len() + code_at + 3) {
            continue;
        }
        let code: u16 = text[at + prefix.len() + code_at..][..3].parse().ok()?;
        return ORANGE_CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, r)| *r);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------------

/// What a permanent (5.x.x) RFC 3463 status says by itself, as `(subject.detail, reason)`.
/// Codes that say only "something about the system / network / security" in general are left
/// out: the words decide those.
const PERMANENT_CODES: &[(&str, Reason)] = &[
    ("1.0", Reason::UserUnknown),
    ("1.1", Reason::UserUnknown),
    ("1.2", Reason::HostUnknown),
    ("1.3", Reason::UserUnknown),
    ("1.4", Reason::Filtered),
    ("1.6", Reason::HasMoved),
    ("1.7", Reason::Rejected),
    ("1.8", Reason::Rejected),
    ("1.9", Reason::SystemError),
    ("1.10", Reason::NotAccept),
    ("2.0", Reason::Filtered),
    ("2.1", Reason::Filtered),
    ("2.2", Reason::MailboxFull),
    ("2.3", Reason::ExceedLimit),
    ("2.4", Reason::Filtered),
    ("3.0", Reason::SystemError),
    ("3.1", Reason::SystemFull),
    ("3.2", Reason::NotAccept),
    ("3.3", Reason::SystemError),
    ("3.4", Reason::MesgTooBig),
    ("3.5", Reason::SystemError),
    ("4.0", Reason::NetworkError),
    ("4.3", Reason::SystemError),
    ("4.4", Reason::HostUnknown),
    ("5.2", Reason::SyntaxError),
    ("5.3", Reason::TooManyConn),
    ("5.4", Reason::SystemError),
    ("5.5", Reason::SystemError),
    ("5.6", Reason::SyntaxError),
    ("6.0", Reason::ContentError),
    ("6.1", Reason::ContentError),
    ("6.2", Reason::ContentError),
    ("6.3", Reason::ContentError),
    ("6.5", Reason::ContentError),
    ("6.6", Reason::ContentError),
    ("6.7", Reason::ContentError),
    ("6.8", Reason::ContentError),
    ("6.9", Reason::ContentError),
    ("7.0", Reason::SecurityError),
    ("7.1", Reason::SecurityError),
    ("7.2", Reason::SecurityError),
    ("7.3", Reason::SecurityError),
    ("7.4", Reason::SecurityError),
    ("7.5", Reason::SecurityError),
    ("7.6", Reason::SecurityError),
    ("7.7", Reason::SecurityError),
    ("7.8", Reason::SecurityError),
    ("7.9", Reason::SecurityError),
    ("7.10", Reason::SecurityError),
    ("7.11", Reason::SecurityError),
    ("7.13", Reason::Suspend),
    ("7.14", Reason::SecurityError),
    ("7.15", Reason::SecurityError),
    ("7.16", Reason::MesgTooBig),
    ("7.17", Reason::HasMoved),
    ("7.18", Reason::HasMoved),
    ("7.19", Reason::SecurityError),
    ("7.20", Reason::AuthFailure),
    ("7.21", Reason::AuthFailure),
    ("7.22", Reason::AuthFailure),
    ("7.23", Reason::AuthFailure),
    ("7.24", Reason::AuthFailure),
    ("7.25", Reason::RequirePtr),
    ("7.26", Reason::AuthFailure),
    ("7.27", Reason::NotAccept),
    ("7.28", Reason::SpamDetected),
    ("7.29", Reason::AuthFailure),
    ("7.30", Reason::FailedStartTls),
];

/// The same for temporary (4.x.x) statuses, which say less: an unknown user or a refusal that
/// may pass later is not named by its code.
const TEMPORARY_CODES: &[(&str, Reason)] = &[
    ("1.6", Reason::HasMoved),
    ("1.7", Reason::Rejected),
    ("1.8", Reason::Rejected),
    ("1.9", Reason::SystemError),
    ("2.1", Reason::Blocked),
    ("2.2", Reason::MailboxFull),
    ("2.3", Reason::ExceedLimit),
    ("2.4", Reason::Filtered),
    ("3.1", Reason::SystemFull),
    ("3.2", Reason::NotAccept),
    ("3.3", Reason::SystemError),
    ("3.5", Reason::SystemError),
    ("4.1", Reason::Expired),
    ("4.2", Reason::NetworkError),
    ("4.3", Reason::SystemError),
    ("4.4", Reason::NetworkError),
    ("4.5", Reason::SystemFull),
    ("4.6", Reason::NetworkError),
    ("4.7", Reason::Expired),
    ("4.8", Reason::NetworkError),
    ("5.3", Reason::SystemError),
    ("5.5", Reason::SystemError),
    ("6.0", Reason::ContentError),
    ("6.2", Reason::ContentError),
    ("6.5", Reason::ContentError),
    ("7.1", Reason::Blocked),
    ("7.2", Reason::Blocked),
    ("7.5", Reason::SecurityError),
    ("7.6", Reason::SecurityError),
    ("7.7", Reason::SecurityError),
    ("7.12", Reason::SecurityError),
    ("7.15", Reason::SecurityError),
    ("7.16", Reason::MesgTooBig),
    ("7.24", Reason::AuthFailure),
    ("7.25", Reason::RequirePtr),
    ("7.26", Reason::AuthFailure),
];

/// sisimai's own codes (`X.0.9NN`, one per reason), which other tools copy into reports.
const INTERNAL_TABLE: &[(u16, Reason)] = &[
    (901, Reason::OnHold),
    (902, Reason::SyntaxError),
    (909, Reason::NoRelaying),
    (910, Reason::Filtered),
    (911, Reason::UserUnknown),
    (912, Reason::HostUnknown),
    (916, Reason::HasMoved),
    (918, Reason::Rejected),
    (921, Reason::Suspend),
    (922, Reason::MailboxFull),
    (923, Reason::ExceedLimit),
    (924, Reason::Filtered),
    (926, Reason::AuthFailure),
    (930, Reason::SystemError),
    (931, Reason::SystemFull),
    (932, Reason::NotAccept),
    (934, Reason::MesgTooBig),
    (939, Reason::MailerError),
    (944, Reason::NetworkError),
    (945, Reason::TooManyConn),
    (946, Reason::Speeding),
    (947, Reason::Expired),
    (960, Reason::ContentError),
    (970, Reason::SecurityError),
    (971, Reason::Blocked),
    (972, Reason::PolicyViolation),
    (973, Reason::RequirePtr),
    (974, Reason::NotCompliantRfc),
    (975, Reason::BadReputation),
    (976, Reason::FailedStartTls),
    (980, Reason::SpamDetected),
    (981, Reason::VirusDetected),
];

/// The status for a reason when the bounce gives none, in sisimai's own scheme (which other
/// tools copy): class 4 or 5, subject 0, the reason's number from [`INTERNAL_TABLE`]
/// (`5.0.911` for an unknown user; a temporary filter refusal is `4.0.924`).
pub fn internal_status(reason: Reason, temporary: bool) -> String {
    let detail = match (reason, temporary) {
        (Reason::Filtered, true) => 924,
        _ => INTERNAL_TABLE
            .iter()
            .find(|(_, r)| *r == reason)
            .map_or(900, |(n, _)| *n),
    };
    format!("{}.0.{detail}", if temporary { 4 } else { 5 })
}

/// The reason an SMTP reply code names by itself, when nothing more specific was said.
fn reply_reason(code: u16) -> Option<Reason> {
    Some(match code {
        // command syntax and sequence errors (RFC 5321 500-504; 4xx twins of some servers)
        401..=407 | 501..=507 => Reason::SyntaxError,
        521 | 556 => Reason::NotAccept,
        523 | 524 | 538 => Reason::FailedStartTls,
        525 => Reason::Suspend,
        530 | 535 => Reason::SecurityError,
        552 => Reason::MailboxFull,
        _ => return None,
    })
}

/// The reason a status code names by itself, if any (`None` for `X.0.0`, unknown codes and
/// anything that is not a status).
pub fn status_reason(status: &str) -> Option<Reason> {
    let (class, rest) = status.split_once('.')?;
    if !matches!(class, "2" | "4" | "5") {
        return None;
    }
    if class == "2" {
        return Some(Reason::Delivered);
    }
    if let Some(n) = rest.strip_prefix("0.").and_then(|d| d.parse::<u16>().ok()) {
        return INTERNAL_TABLE
            .iter()
            .find(|(c, _)| *c == n)
            .map(|(_, r)| *r);
    }
    let table = if class == "4" {
        TEMPORARY_CODES
    } else {
        PERMANENT_CODES
    };
    table.iter().find(|(c, _)| *c == rest).map(|(_, r)| *r)
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// The SMTP stage a refusal answered, as far as the diagnostic's wording tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The connection or the greeting (EHLO/HELO).
    Connect,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA or the end of the data.
    Data,
}

/// Wordings (lower-case) that tell the stage; the earliest in the text wins.
const STAGE_MARKS: &[(&str, Stage)] = &[
    ("in reply to rcpt to command", Stage::Rcpt),
    ("after rcpt to", Stage::Rcpt),
    ("did not like our rcpt to", Stage::Rcpt),
    ("does not like recipient", Stage::Rcpt),
    ("error following rcpt command", Stage::Rcpt),
    ("[rcpt_to]", Stage::Rcpt),
    ("in reply to end of data command", Stage::Data),
    ("in reply to data command", Stage::Data),
    ("after end of data", Stage::Data),
    ("did not like our final data", Stage::Data),
    ("failed after i sent the message", Stage::Data),
    ("[data]", Stage::Data),
    ("(data)", Stage::Data),
    ("in reply to mail from command", Stage::Mail),
    ("after mail from", Stage::Mail),
    ("but sender was rejected", Stage::Mail),
    ("[mail_from]", Stage::Mail),
    ("after initial connection", Stage::Connect),
    ("after ehlo", Stage::Connect),
    ("after helo", Stage::Connect),
    ("refused to talk to me", Stage::Connect),
    ("but my name was rejected", Stage::Connect),
];

/// Everything [`classify`] goes on, normalised.
struct Facts<'a> {
    /// The diagnostic, lower-case, whitespace runs as one space.
    text: String,
    /// The status, if it looks like one.
    status: Option<&'a str>,
    /// What the status names by itself.
    named: Option<Reason>,
    /// The SMTP reply code.
    reply: Option<u16>,
    /// The stage the text names.
    stage: Option<Stage>,
    /// The RFC 3464 action, lower-case.
    action: String,
    /// The phrase tables the text matches ([`phrase_set`]'s bits).
    found: u64,
}

impl Facts<'_> {
    /// The text has one of the phrases of `reason`.
    fn says(&self, reason: Reason) -> bool {
        let Some(bit) = table_bit(reason) else {
            return false;
        };
        self.found & bit != 0 && (reason != Reason::Rejected || self.found & REJECTED_NOT_BIT == 0)
    }

    /// The status names `reason`.
    fn names(&self, reason: Reason) -> bool {
        self.named == Some(reason)
    }

    /// The stage is known and is not `stage`.
    fn stage_other_than(&self, stage: Stage) -> bool {
        self.stage.is_some_and(|s| s != stage)
    }
}

/// The phrase table of each reason that has one.
const TABLED: &[(Reason, &[&str])] = &[
    (Reason::MailboxFull, MAILBOX_FULL),
    (Reason::MesgTooBig, MESG_TOO_BIG),
    (Reason::ExceedLimit, EXCEED_LIMIT),
    (Reason::Suspend, SUSPEND),
    (Reason::HasMoved, HAS_MOVED),
    (Reason::NoRelaying, NO_RELAYING),
    (Reason::AuthFailure, AUTH_FAILURE),
    (Reason::UserUnknown, USER_UNKNOWN),
    (Reason::Filtered, FILTERED),
    (Reason::RequirePtr, REQUIRE_PTR),
    (Reason::NotCompliantRfc, NOT_COMPLIANT),
    (Reason::BadReputation, BAD_REPUTATION),
    (Reason::ContentError, CONTENT_ERROR),
    (Reason::Rejected, REJECTED),
    (Reason::HostUnknown, HOST_UNKNOWN),
    (Reason::SpamDetected, SPAM),
    (Reason::Speeding, SPEEDING),
    (Reason::TooManyConn, TOO_MANY_CONN),
    (Reason::Blocked, BLOCKED),
    (Reason::VirusDetected, VIRUS),
    (Reason::PolicyViolation, POLICY),
    (Reason::SystemError, SYSTEM_ERROR),
    (Reason::NetworkError, NETWORK),
    (Reason::SystemFull, SYSTEM_FULL),
    (Reason::NotAccept, NOT_ACCEPT),
    (Reason::Expired, EXPIRED),
    (Reason::FailedStartTls, STARTTLS),
    (Reason::SyntaxError, SYNTAX_ERROR),
    (Reason::SecurityError, SECURITY),
    (Reason::MailerError, MAILER_ERROR),
    (Reason::Vacation, VACATION),
    (Reason::Feedback, FEEDBACK),
];

/// Every phrase table compiled into one matcher: bit `i` for `TABLED[i]`, then
/// [`REJECTED_NOT`] (the wordings that cancel "rejected").
fn phrase_set() -> &'static PhraseSet {
    static SET: OnceLock<PhraseSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut tables: Vec<&[&str]> = TABLED.iter().map(|(_, t)| *t).collect();
        tables.push(REJECTED_NOT);
        PhraseSet::new(&tables)
    })
}

/// The bit of `reason`'s table in [`phrase_set`]'s answer, if it has a table.
fn table_bit(reason: Reason) -> Option<u64> {
    TABLED
        .iter()
        .position(|(r, _)| *r == reason)
        .map(|i| 1 << i)
}

/// The bit of [`REJECTED_NOT`].
const REJECTED_NOT_BIT: u64 = 1 << TABLED.len();

/// Lower-case, every run of whitespace as one space, trimmed; the line prefixes of a
/// multi-line reply joined into one line (`550-5.2.1` in `... at a rate that 550-5.2.1
/// prevents additional messages ...`) left out after the first word, so phrases read across
/// the lines.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            if is_continuation(word) {
                continue;
            }
            out.push(' ');
        }
        if word.is_ascii() {
            out.extend(word.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            out.extend(word.chars().flat_map(char::to_lowercase));
        }
    }
    out
}

/// A multi-line reply's line prefix: a reply code and `-`, then perhaps its status
/// (`550-`, `550-5.2.1`).
fn is_continuation(word: &str) -> bool {
    let b = word.as_bytes();
    let status = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || *c == b'.');
    b.len() >= 4
        && matches!(b[0], b'2' | b'4' | b'5')
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && (b.len() == 4 || (b[4] == b[0] && status(&b[5..])))
}

/// The stage the text names (the earliest mark).
fn stage_in(text: &str) -> Option<Stage> {
    static MARKS: OnceLock<AhoCorasick> = OnceLock::new();
    let marks = MARKS.get_or_init(|| {
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(STAGE_MARKS.iter().map(|(mark, _)| mark))
            .expect("stage marks compile")
    });
    marks
        .find(text)
        .map(|m| STAGE_MARKS[m.pattern().as_usize()].1)
}

/// The classes the first round tries, in order: each is decided by its status code or its own
/// phrases (see [`first_round_says`]).
const FIRST_ROUND: &[Reason] = &[
    Reason::MailboxFull,
    Reason::MesgTooBig,
    Reason::ExceedLimit,
    Reason::Suspend,
    Reason::HasMoved,
    Reason::NoRelaying,
    Reason::AuthFailure,
    Reason::UserUnknown,
    Reason::Filtered,
    Reason::RequirePtr,
    Reason::NotCompliantRfc,
    Reason::BadReputation,
    Reason::ContentError,
    Reason::Rejected,
    Reason::HostUnknown,
    Reason::SpamDetected,
    Reason::Speeding,
    Reason::TooManyConn,
    Reason::Blocked,
];

/// Whether the first round settles on `reason`.
fn first_round_says(f: &Facts, reason: Reason) -> bool {
    match reason {
        Reason::MailboxFull => f.names(reason) || (!f.names(Reason::SystemFull) && f.says(reason)),
        Reason::MesgTooBig => f.names(reason) || (!f.names(Reason::ExceedLimit) && f.says(reason)),
        Reason::Suspend => f.names(reason) || f.reply == Some(525) || f.says(reason),
        Reason::NoRelaying => f.stage != Some(Stage::Connect) && f.says(reason),
        Reason::UserUnknown => user_unknown(f),
        // a filter's refusal: its own words, or "unknown" words where the status says X.2.x
        // (the mailbox exists) or the refusal came after the data
        Reason::Filtered => {
            f.says(reason) && !f.stage_other_than(Stage::Data)
                || filter_says_unknown(f) && f.says(Reason::UserUnknown)
        }
        Reason::ContentError => {
            !first_round_says(f, Reason::SpamDetected) && (f.names(reason) || f.says(reason))
        }
        Reason::Rejected => f.names(reason) || (rejected_may_apply(f) && f.says(reason)),
        Reason::HostUnknown => {
            (f.names(reason) || f.says(reason))
                && !f.says(Reason::NetworkError)
                && !f.says(Reason::NotAccept)
        }
        Reason::SpamDetected => {
            f.names(reason)
                || (!f.stage_other_than(Stage::Data)
                    && f.says(reason)
                    && !f.says(Reason::VirusDetected))
        }
        r => f.names(r) || f.says(r),
    }
}

/// Whether "unknown user" words are a filter's: the status says the mailbox exists (X.2.x), or
/// the refusal came after the data, or a security status (X.7.x) came at a stage the words do
/// not tell.
fn filter_says_unknown(f: &Facts) -> bool {
    f.names(Reason::Filtered)
        || f.stage == Some(Stage::Data)
        || f.stage.is_none() && f.names(Reason::SecurityError)
}

/// Classes whose words outweigh a status that says "unknown user".
const OVER_UNKNOWN: &[Reason] = &[
    Reason::NoRelaying,
    Reason::Blocked,
    Reason::MailboxFull,
    Reason::HasMoved,
    Reason::Rejected,
    Reason::NotAccept,
    Reason::Filtered,
    Reason::Speeding,
    Reason::MailerError,
];

/// The mailbox does not exist: the status says so and no other class's words do, or the
/// words say so at RCPT TO, or at a stage the words do not tell unless the status speaks of
/// the sender, a mailbox that exists or security (see [`filter_says_unknown`]).
fn user_unknown(f: &Facts) -> bool {
    if f.names(Reason::UserUnknown) {
        return !OVER_UNKNOWN.iter().any(|r| f.says(*r));
    }
    let stage_fits = match f.stage {
        Some(Stage::Rcpt) => true,
        None => !matches!(
            f.named,
            Some(Reason::Rejected | Reason::Filtered | Reason::SecurityError)
        ),
        Some(Stage::Connect | Stage::Mail | Stage::Data) => false,
    };
    stage_fits && f.says(Reason::UserUnknown) && !f.says(Reason::Filtered)
}

/// Whether wording about a refused sender may decide: at MAIL FROM, at DATA unless the status
/// says "unknown user", or elsewhere when the status names nothing more specific.
fn rejected_may_apply(f: &Facts) -> bool {
    match f.stage {
        Some(Stage::Mail) => true,
        Some(Stage::Data) => !f.names(Reason::UserUnknown),
        Some(Stage::Rcpt | Stage::Connect) | None => matches!(
            f.named,
            None | Some(Reason::OnHold | Reason::SecurityError | Reason::SystemError)
        ),
    }
}

/// Statuses whose class is a guess the words may overrule.
fn named_is_weak(named: Option<Reason>) -> bool {
    matches!(
        named,
        None | Some(
            Reason::Undefined
                | Reason::OnHold
                | Reason::SystemError
                | Reason::SecurityError
                | Reason::Expired
                | Reason::NetworkError
                | Reason::HostUnknown
                | Reason::UserUnknown
        )
    )
}

/// The classes the second round looks for in the words, in order.
const SECOND_ROUND: &[Reason] = &[
    Reason::MailboxFull,
    Reason::AuthFailure,
    Reason::BadReputation,
    Reason::Speeding,
    Reason::VirusDetected,
    Reason::SpamDetected,
    Reason::PolicyViolation,
    Reason::NoRelaying,
    Reason::SystemError,
    Reason::NetworkError,
    Reason::Suspend,
    Reason::ContentError,
    Reason::SystemFull,
    Reason::NotAccept,
    Reason::Expired,
    Reason::FailedStartTls,
    Reason::SecurityError,
    Reason::MailerError,
    Reason::SyntaxError,
];

/// The second round: when the status names nothing or only a weak class, more phrases, then
/// the status, then its subject digit, the reply code, the action and the stage.
fn second_round(f: &Facts) -> Option<Reason> {
    if !named_is_weak(f.named) {
        return f.named;
    }
    if let Some(r) = SECOND_ROUND.iter().copied().find(|r| f.says(*r)) {
        return Some(r);
    }
    if f.named.is_some() {
        return f.named;
    }
    match f.status.and_then(|s| s.get(1..3)) {
        Some(".6") => return Some(Reason::ContentError),
        Some(".7") => return Some(Reason::SecurityError),
        _ => {}
    }
    if let Some(r) = f.reply.and_then(reply_reason) {
        return Some(r);
    }
    if matches!(f.action.as_str(), "delayed" | "expired") {
        return Some(Reason::Expired);
    }
    (f.stage == Some(Stage::Connect)).then_some(Reason::Blocked)
}

/// The diagnostic is nothing but a number no greater than 255: the exit status of a local
/// delivery program (sendmail's `Diagnostic-Code: X-Unix; 255`, `EX_OSERR` 71), not a server's
/// reply. A mailer error unless the status names a reason of its own (`5.3.0` system error).
fn is_exit_status(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 3
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok_and(|n| n <= 255)
}

/// The reason for one failed recipient from what the bounce says: RFC 3463 `status`
/// (`"5.1.1"`), SMTP `reply_code`, the remote server's `diagnostic` text (any length, lines
/// and case) and the RFC 3464 `action` if any. Specific phrases and specific status codes
/// first, then the status code's class, then the reply code. Pure, never panics, linear in the
/// input.
pub fn classify(
    status: Option<&str>,
    reply_code: Option<u16>,
    diagnostic: &str,
    action: Option<&str>,
) -> Reason {
    classify_after(status, reply_code, diagnostic, action, None)
}

/// [`classify`], knowing which SMTP `command` (`"MAIL"`, `"RCPT"`, `"DATA"`; `"EHLO"`,
/// `"HELO"` or `"CONN"` for the greeting or the connection) the refusal answered when the
/// bounce says so elsewhere than in the diagnostic (a transcript, the bounce's own wording);
/// the diagnostic's own words about the stage come first.
pub fn classify_after(
    status: Option<&str>,
    reply_code: Option<u16>,
    diagnostic: &str,
    action: Option<&str>,
    command: Option<&str>,
) -> Reason {
    let status = status.map(str::trim).filter(|s| s.len() >= 5);
    let named = status.and_then(status_reason);
    let action = action
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if named == Some(Reason::Delivered)
        || matches!(
            action.as_str(),
            "delivered" | "relayed" | "expanded" | "deliverable"
        )
    {
        return Reason::Delivered;
    }
    let text = normalise(diagnostic);
    let stage = stage_in(&text).or(match command {
        Some("MAIL") => Some(Stage::Mail),
        Some("RCPT") => Some(Stage::Rcpt),
        Some("DATA") => Some(Stage::Data),
        Some("EHLO" | "HELO" | "CONN") => Some(Stage::Connect),
        _ => None,
    });
    let found = phrase_set().matches(&text);
    let f = Facts {
        found,
        text,
        status,
        named,
        reply: reply_code,
        stage,
        action,
    };
    if named.is_none() && is_exit_status(&f.text) {
        return Reason::MailerError;
    }
    if status.is_none() && reply_code.is_none() && f.says(Reason::Feedback) {
        return Reason::Feedback;
    }
    if let Some(r) = provider_code(&f.text) {
        return r;
    }
    if let Some(r) = FIRST_ROUND
        .iter()
        .copied()
        .find(|r| first_round_says(&f, *r))
    {
        return r;
    }
    if let Some(r) = second_round(&f) {
        return r;
    }
    if f.says(Reason::Vacation) {
        Reason::Vacation
    } else if f.text.is_empty() {
        Reason::Undefined
    } else {
        Reason::OnHold
    }
}
