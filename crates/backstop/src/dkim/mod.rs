//! DKIM signing (RFC 6376, RFC 8463) of the mail that leaves through the gateway: messages
//! from the relay networks and the reports backstop writes itself.
//!
//! Responsible for: the keys of `[[dkim]]` (read from PEM files, or generated once into
//! `state_dir/dkim/` and kept there), the DNS record each key needs, choosing the signing
//! domain of a message (its author's domain, else its envelope sender's, or the nearest
//! parent domain that has a key), signing with every signing key of that domain (RSA and
//! Ed25519 side by side), and not signing again a message that already carries a valid
//! signature of the same key. The body is read piece by piece, never held whole.
//! Not responsible for: where the signature goes (the caller puts it on top, above our
//! `Received:`), verifying other people's signatures (`auth`), nor DNS publication.
//!
//! The `t=` tag is the wall clock's (mail-auth's signer reads it); nothing else here reads
//! time or randomness except key generation, which uses the system's random source.

use crate::config::{Config, Dkim, DkimAlgorithm};
use crate::content::Content;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, Signature};
use mail_auth::{AuthenticatedMessage, ResolverCache, Txt};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The header fields signed, in this order. `From` is listed twice and absent fields are
/// signed as absent, so none can be added after signing without breaking the signature.
pub const SIGNED_HEADERS: [&str; 15] = [
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The largest header section read to find the author; past it the message is not signed.
const MAX_HEADER: usize = 1 << 20;

/// What went wrong with a key or a signature.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file holds no usable key of the configured algorithm.
    #[error("{path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        why: String,
    },
    /// Generating a key failed.
    #[error("generating the {0} key failed")]
    Generate(DkimAlgorithm),
}

/// A private key, as the signer built for its domain and selector.
enum Private {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Private {
    fn stream(&self) -> Stream<'_> {
        match self {
            Private::Rsa(s) => Stream::Rsa(s.sign_streaming()),
            Private::Ed25519(s) => Stream::Ed25519(s.sign_streaming()),
        }
    }
}

/// One `[[dkim]]` key, loaded.
pub struct Key {
    /// Its configuration.
    pub cfg: Dkim,
    /// Where the private key is.
    pub path: PathBuf,
    /// The public key as published: SubjectPublicKeyInfo (RSA) or the raw 32 bytes (Ed25519).
    public: Vec<u8>,
    /// `None` when not loaded (a key to be generated at start, seen by `check-config`).
    private: Option<Private>,
}

impl Key {
    /// The TXT record's name: `SELECTOR._domainkey.DOMAIN`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.cfg.selector, self.cfg.domain)
    }

    /// The TXT record's text: `v=DKIM1; k=rsa; p=...`.
    pub fn record(&self) -> String {
        let p = data_encoding::BASE64.encode(&self.public);
        format!("v=DKIM1; k={}; p={p}", self.cfg.algorithm.key_type())
    }

    /// Whether the key exists yet (it is generated at the first start when it does not).
    pub fn exists(&self) -> bool {
        self.private.is_some()
    }
}

/// A message signed, or why not.
#[derive(Debug, PartialEq)]
pub enum Signed {
    /// The `DKIM-Signature:` fields to put on top (CRLF-terminated), with `d=` and the
    /// selectors that signed.
    Yes {
        /// The header fields.
        header: Vec<u8>,
        /// `d=`.
        domain: String,
        /// The selectors, with their algorithms: `s2026 (rsa), e2026 (ed25519)`.
        selectors: String,
        /// The algorithms, one per signature.
        algorithms: Vec<&'static str>,
    },
    /// No key for the author's or the sender's domain.
    NoKey,
    /// It carries valid signatures of every key that would sign (looped back to us).
    Already {
        /// `d=`.
        domain: String,
    },
    /// It could not be signed (no header section, a key refused to sign).
    Failed(String),
}

/// The keys of a configuration.
#[derive(Default)]
pub struct Signer {
    keys: Vec<Key>,
}

impl Signer {
    /// Loads every `[[dkim]]` key; with `create`, a generated key that does not exist yet is
    /// generated and written (mode 0600) under `state_dir/dkim/`.
    pub fn load(cfg: &Config, create: bool) -> Result<Signer, DkimError> {
        let keys = cfg
            .dkim
            .iter()
            .map(|k| load_key(k, &cfg.state_dir, create))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { keys })
    }

    /// The keys, in configuration order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether no key signs.
    pub fn is_empty(&self) -> bool {
        !self.keys.iter().any(|k| k.cfg.sign)
    }

    /// The domain that signs for mail at `domain`: itself or its nearest parent with a
    /// signing key.
    pub fn domain_for(&self, domain: &str) -> Option<&str> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.keys
            .iter()
            .filter(|k| k.cfg.sign && k.private.is_some())
            .map(|k| k.cfg.domain.as_str())
            .filter(|d| domain == *d || domain.ends_with(&format!(".{d}")))
            .max_by_key(|d| d.len())
    }

    /// Signs `message` (our trace header included) for its author's domain, else for the
    /// envelope sender's `sender_domain`. Reads the message piece by piece and signs: call it
    /// off the async threads (`spawn_blocking`), never from a task.
    pub fn sign(&self, message: &Content, sender_domain: Option<&str>) -> Signed {
        if self.is_empty() {
            return Signed::NoKey;
        }
        let mut reader = message.reader();
        let (head, at_end) = match read_header(&mut reader) {
            Ok(h) => h,
            Err(why) => return Signed::Failed(why),
        };
        let parsed = AuthenticatedMessage::parse(&head[..at_end]);
        let author = parsed
            .as_ref()
            .and_then(|p| p.from.first())
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_string());
        let domain = author
            .as_deref()
            .and_then(|a| self.domain_for(a))
            .or_else(|| sender_domain.and_then(|s| self.domain_for(s)));
        let Some(domain) = domain else {
            return Signed::NoKey;
        };
        let keys: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.cfg.sign && k.cfg.domain == domain)
            .collect();
        let ours: Vec<&Signature> = parsed
            .iter()
            .flat_map(|p| p.dkim_headers.iter().map(|h| &h.header))
            .filter(|s| keys.iter().any(|k| same_key(s, k)))
            .collect();
        let mut signatures = match sign_stream(&keys, &head, &mut reader) {
            Ok(s) => s,
            Err(why) => return Signed::Failed(why),
        };
        if !ours.is_empty() {
            let valid = self.already_signed(message, &keys);
            signatures.retain(|(k, _)| !valid.contains(&k.cfg.selector));
            if signatures.is_empty() {
                return Signed::Already {
                    domain: domain.to_string(),
                };
            }
        }
        let mut header = Vec::new();
        let mut selectors = Vec::new();
        for (k, s) in &signatures {
            header.extend_from_slice(tidy(s.to_header()).as_bytes());
            selectors.push(format!("{} ({})", k.cfg.selector, k.cfg.algorithm));
        }
        Signed::Yes {
            header,
            domain: domain.to_string(),
            selectors: selectors.join(", "),
            algorithms: signatures
                .iter()
                .map(|(k, _)| k.cfg.algorithm.key_type())
                .collect(),
        }
    }

    /// The selectors among `keys` whose signature on `message` verifies against our own key
    /// (no DNS: the records are ours). Reads the whole message: only for a message that
    /// carries a signature naming one of our keys.
    fn already_signed(&self, message: &Content, keys: &[&Key]) -> Vec<String> {
        let Ok(whole) = message.to_vec() else {
            return Vec::new();
        };
        let Some(mut parsed) = AuthenticatedMessage::parse(&whole) else {
            return Vec::new();
        };
        // only our signatures: their keys are answered from `records`, nothing asks the DNS
        parsed
            .dkim_headers
            .retain(|h| keys.iter().any(|k| same_key(&h.header, k)));
        let records = OurRecords::of(keys);
        let none =
            mail_auth::hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]);
        let Ok(auth) = mail_auth::MessageAuthenticator::new(none, Default::default()) else {
            return Vec::new();
        };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            return Vec::new();
        };
        let params = mail_auth::Parameters::new(&parsed).with_txt_cache(&records);
        let outputs = rt.block_on(auth.verify_dkim(params));
        outputs
            .iter()
            .filter(|o| o.result() == &mail_auth::DkimResult::Pass)
            .filter_map(|o| o.signature())
            .filter_map(|s| keys.iter().find(|k| same_key(s, k)))
            .map(|k| k.cfg.selector.clone())
            .collect()
    }
}

/// Signs message `id` off the async threads (see [`Signer::sign`]) and logs the outcome;
/// the `DKIM-Signature:` fields to put on top, empty when it is not signed (no key for its
/// domains, signed already, or signing failed: then it leaves unsigned, with a warning).
pub async fn sign_and_log(
    signer: &Arc<Signer>,
    id: &str,
    message: Content,
    sender_domain: Option<String>,
) -> Vec<u8> {
    if signer.is_empty() {
        return Vec::new();
    }
    let s = signer.clone();
    let signed = tokio::task::spawn_blocking(move || s.sign(&message, sender_domain.as_deref()))
        .await
        .unwrap_or_else(|e| Signed::Failed(format!("signing stopped: {e}")));
    let (result, domain, detail, algorithms, header) = match signed {
        Signed::NoKey => return Vec::new(),
        Signed::Yes {
            header,
            domain,
            selectors,
            algorithms,
        } => ("signed", domain, selectors, algorithms, header),
        Signed::Already { domain } => (
            "already_signed",
            domain,
            "it carries a valid signature of ours".to_string(),
            vec![],
            vec![],
        ),
        Signed::Failed(why) => (
            "failed",
            String::new(),
            format!("{why}; sent unsigned"),
            vec![],
            vec![],
        ),
    };
    crate::telemetry::Event::Dkim {
        id,
        result,
        domain: &domain,
        detail: &detail,
        algorithms: &algorithms,
    }
    .emit();
    header
}

/// mail-auth folds the line when the `b=` value fills it exactly, leaving folding white
/// space between the value and its `;`. Verifiers that delete the `b=` value up to the `;`
/// (dkimpy, OpenDKIM) then hash other bytes than were signed: the fold is taken out.
fn tidy(header: String) -> String {
    match header.strip_suffix("\r\n\t;\r\n") {
        Some(h) => format!("{h};\r\n"),
        None => header,
    }
}

/// Whether signature `s` names key `k` (same `d=` and `s=`).
fn same_key(s: &Signature, k: &Key) -> bool {
    s.d.eq_ignore_ascii_case(&k.cfg.domain) && s.s.eq_ignore_ascii_case(&k.cfg.selector)
}

/// Reads until the end of the header section; the bytes read and where the section ends
/// (after its blank line, or the whole of a message without a body).
fn read_header(reader: &mut impl Read) -> Result<(Vec<u8>, usize), String> {
    let mut head = Vec::with_capacity(16 * 1024);
    let mut piece = vec![0u8; 64 * 1024];
    loop {
        if let Some(p) = memchr::memmem::find(&head, b"\r\n\r\n") {
            return Ok((head, p + 4));
        }
        if head.len() > MAX_HEADER {
            return Err("a header section over 1 MiB".into());
        }
        let n = reader
            .read(&mut piece)
            .map_err(|e| format!("reading the message: {e}"))?;
        if n == 0 {
            let end = head.len();
            return Ok((head, end));
        }
        head.extend_from_slice(&piece[..n]);
    }
}

/// Signs with each key: `head` (already read) and the rest of `reader`, hashed once per key.
fn sign_stream<'k>(
    keys: &[&'k Key],
    head: &[u8],
    reader: &mut impl Read,
) -> Result<Vec<(&'k Key, Signature)>, String> {
    let mut streams: Vec<(&Key, Stream<'_>)> = keys
        .iter()
        .filter_map(|k| Some((*k, k.private.as_ref()?.stream())))
        .collect();
    let mut feed = |bytes: &[u8]| streams.iter_mut().for_each(|(_, s)| s.write(bytes));
    feed(head);
    let mut piece = vec![0u8; crate::content::PIECE];
    loop {
        let n = reader
            .read(&mut piece)
            .map_err(|e| format!("reading the message: {e}"))?;
        if n == 0 {
            break;
        }
        feed(&piece[..n]);
    }
    streams
        .into_iter()
        .map(|(k, s)| {
            s.finish()
                .map(|sig| (k, sig))
                .map_err(|e| format!("{} ({}): {e}", k.cfg.selector, k.cfg.algorithm))
        })
        .collect()
}

/// One key's signature being made.
enum Stream<'s> {
    Rsa(mail_auth::dkim::DkimSigningStream<'s, RsaKey<Sha256>>),
    Ed25519(mail_auth::dkim::DkimSigningStream<'s, Ed25519Key>),
}

impl Stream<'_> {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            Stream::Rsa(s) => s.write(bytes),
            Stream::Ed25519(s) => s.write(bytes),
        }
    }

    fn finish(self) -> mail_auth::Result<Signature> {
        match self {
            Stream::Rsa(s) => s.finish(),
            Stream::Ed25519(s) => s.finish(),
        }
    }
}

/// Our own keys' records, as the DNS would give them, for checking our own signatures.
struct OurRecords(HashMap<Box<str>, Txt>);

impl OurRecords {
    fn of(keys: &[&Key]) -> OurRecords {
        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::common::verify::DomainKey;
        let map = keys
            .iter()
            .filter_map(|k| {
                let key = DomainKey::parse(k.record().as_bytes()).ok()?;
                let name = format!("{}.", k.record_name()).into_boxed_str();
                Some((name, Txt::DomainKey(Arc::new(key))))
            })
            .collect();
        OurRecords(map)
    }
}

impl ResolverCache<Box<str>, Txt> for OurRecords {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Where a key without `key =` lives: `state_dir/dkim/DOMAIN.SELECTOR.key`.
pub fn generated_path(state_dir: &Path, k: &Dkim) -> PathBuf {
    state_dir
        .join("dkim")
        .join(format!("{}.{}.key", k.domain, k.selector))
}

fn load_key(k: &Dkim, state_dir: &Path, create: bool) -> Result<Key, DkimError> {
    let path = k
        .key
        .clone()
        .unwrap_or_else(|| generated_path(state_dir, k));
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && k.key.is_none() => {
            if !create {
                return Ok(Key {
                    cfg: k.clone(),
                    path,
                    public: Vec::new(),
                    private: None,
                });
            }
            generate(k.algorithm, &path)?
        }
        Err(source) => return Err(DkimError::Io { path, source }),
    };
    let (private, public) = parse_key(k, &pem).map_err(|why| DkimError::Key {
        path: path.clone(),
        why,
    })?;
    Ok(Key {
        cfg: k.clone(),
        path,
        public,
        private: Some(private),
    })
}

/// The private key in `pem` and its public key as published.
fn parse_key(k: &Dkim, pem: &[u8]) -> Result<(Private, Vec<u8>), String> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM private key in it ({e})"))?;
    match k.algorithm {
        DkimAlgorithm::Rsa => {
            let pair = match &der {
                PrivateKeyDer::Pkcs1(d) => aws_lc_rs::rsa::KeyPair::from_der(d.secret_pkcs1_der()),
                PrivateKeyDer::Pkcs8(d) => {
                    aws_lc_rs::rsa::KeyPair::from_pkcs8(d.secret_pkcs8_der())
                }
                _ => return Err("not an RSA key (algorithm = \"rsa\")".into()),
            }
            .map_err(|e| format!("not a usable RSA key (algorithm = \"rsa\"): {e}"))?;
            let bits = pair.public_modulus_len() * 8;
            if bits < 1024 {
                return Err(format!("{bits}-bit RSA: RFC 8301 needs 1024 bits or more"));
            }
            use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
            use aws_lc_rs::signature::KeyPair as _;
            let spki: PublicKeyX509Der<'_> = pair
                .public_key()
                .as_der()
                .map_err(|_| "its public key cannot be encoded".to_string())?;
            let key = RsaKey::<Sha256>::from_key_der(der.clone_key())
                .map_err(|e| format!("not a usable RSA key: {e}"))?;
            Ok((Private::Rsa(signer(key, k)), spki.as_ref().to_vec()))
        }
        DkimAlgorithm::Ed25519 => {
            let PrivateKeyDer::Pkcs8(d) = &der else {
                return Err("not a PKCS#8 Ed25519 key (algorithm = \"ed25519\")".into());
            };
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(d.secret_pkcs8_der())
                .map_err(|_| "not an Ed25519 key (algorithm = \"ed25519\")".to_string())?;
            let public = key.public_key();
            Ok((Private::Ed25519(signer(key, k)), public))
        }
    }
}

/// mail-auth's signer for `key` as `k` signs: relaxed canonicalization of header and body
/// (what survives the usual changes in transit), [`SIGNED_HEADERS`].
fn signer<T: mail_auth::common::crypto::SigningKey<Hasher = Sha256>>(
    key: T,
    k: &Dkim,
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(k.domain.as_str())
        .selector(k.selector.as_str())
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// Generates a key of `algorithm` into `path` (PKCS#8 PEM, mode 0600, never over a file);
/// its PEM text.
fn generate(algorithm: DkimAlgorithm, path: &Path) -> Result<Vec<u8>, DkimError> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    let der: Vec<u8> = match algorithm {
        DkimAlgorithm::Rsa => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| DkimError::Generate(algorithm))?;
            let der: Pkcs8V1Der<'_> = pair.as_der().map_err(|_| DkimError::Generate(algorithm))?;
            der.as_ref().to_vec()
        }
        DkimAlgorithm::Ed25519 => {
            Ed25519Key::generate_pkcs8().map_err(|_| DkimError::Generate(algorithm))?
        }
    };
    let pem = pem("PRIVATE KEY", &der);
    let io = |source| DkimError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(pem.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    give_to_state_owner(path);
    tracing::info!(
        file = %path.display(), algorithm = %algorithm,
        "DKIM key generated; publish its record (backstop dkim show)"
    );
    Ok(pem.into_bytes())
}

/// A key generated by root (`backstop dkim show` run with sudo) for a gateway that runs as
/// its own user: the key and its directory are given to the owner of `state_dir`, or the
/// service could not read them.
fn give_to_state_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Some(dir), Some(state)) = (path.parent(), path.parent().and_then(Path::parent)) else {
        return;
    };
    let (Ok(file), Ok(owner)) = (std::fs::metadata(path), std::fs::metadata(state)) else {
        return;
    };
    if file.uid() == owner.uid() {
        return;
    }
    for p in [dir, path] {
        if let Err(e) = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())) {
            tracing::warn!(
                file = %p.display(), error = %e,
                "cannot give it to the owner of the state directory: the gateway may not read it"
            );
        }
    }
}

/// The key's record as a zone file line, its text cut into strings of at most 255 bytes
/// (RFC 1035 §3.3.14).
pub fn zone_line(k: &Key) -> String {
    let text = k.record();
    let parts: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT ( {} )", k.record_name(), parts.join(" "))
}

/// `der` as PEM with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new key of `algorithm` to `path`, for tests elsewhere that configure a key file.
#[cfg(test)]
pub(crate) fn write_key_for_tests(path: &Path, algorithm: DkimAlgorithm) {
    generate(algorithm, path).unwrap();
}

#[cfg(test)]
mod tests;
