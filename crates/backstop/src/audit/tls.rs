//! The STARTTLS check of `backstop audit`: a connection of its own that asks for STARTTLS with
//! a NOOP pipelined behind it (RFC 3207 says such commands are thrown away; a server that runs
//! them after the handshake lets an attacker inject commands: CVE-2011-0411), shakes hands,
//! and reads the certificate the server shows.
//!
//! Responsible for: that dialogue, and turning the certificate into plain facts (names,
//! issuer, validity, whether this machine's CAs trust it for the name). Not responsible for:
//! the verdicts (`judge`), the TLS client configuration (`upstream::tls`).

use super::judge::{self, Certificate, Finding};
use super::wire::{Lost, Tls};
use super::{Options, Seen};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The STARTTLS findings, on a connection of its own (none when STARTTLS is not offered).
pub(super) async fn check(opts: &Options, seen: &mut Seen) -> Result<Vec<Finding>, Lost> {
    let (mut c, ehlo) = super::greeted(opts, seen).await?;
    if !ehlo
        .lines
        .iter()
        .any(|l| l.eq_ignore_ascii_case("STARTTLS"))
    {
        super::close(c, seen).await;
        return Ok(vec![judge::starttls(false)]);
    }
    c.send(b"STARTTLS\r\nNOOP\r\n").await?;
    c.sent += 1;
    let (go, _) = c.reply().await?;
    if go.code != 220 {
        seen.commands += c.sent;
        super::close(c, seen).await;
        let detail = format!("offered, but STARTTLS was answered {go}");
        return Ok(vec![judge::finding_info("STARTTLS", detail)]);
    }
    let in_clear = c.buffered_reply();
    let name = server_name(opts);
    let (mut c, tls) = c.tls(name.clone()).await?;
    let injected = c
        .maybe_reply(Duration::from_secs(1).min(opts.timeout))
        .await;
    let (ehlo, _) = c.cmd(&format!("EHLO {}", opts.helo)).await?;
    seen.commands += c.sent;
    super::close(c, seen).await;
    let cert = certificate(&tls, &name, opts.now);
    Ok(vec![
        judge::tls(&tls.version, &tls.cipher, &ehlo, cert.as_ref(), opts.now),
        judge::pipelined_before_tls(in_clear.as_ref(), injected.as_ref()),
    ])
}

/// The name the certificate should carry: `--tls-name`, else the host name audited, else
/// none (an address: the certificate's own first name is used, so only trust is checked).
fn server_name(opts: &Options) -> ServerName<'static> {
    let ip = opts.addr.ip();
    match &opts.tls_name {
        Some(n) => crate::upstream::tls::server_name(n, ip),
        None => ServerName::IpAddress(ip.into()),
    }
}

/// The facts of the server's certificate; `None` when it showed none or it cannot be read.
fn certificate(tls: &Tls, name: &ServerName<'static>, now: SystemTime) -> Option<Certificate> {
    let der = tls.chain.first()?;
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    let subject = x509.subject().to_string();
    let issuer = x509.issuer().to_string();
    let checked_name = match name {
        ServerName::DnsName(d) => Some(d.as_ref().to_string()),
        _ => None,
    };
    let as_name = checked_name
        .clone()
        .or_else(|| names.first().cloned())
        .and_then(|n| ServerName::try_from(n).ok())
        .unwrap_or_else(|| name.clone());
    let name_matches = checked_name
        .as_deref()
        .map(|n| names.iter().any(|c| covers(c, n)));
    Some(Certificate {
        name_matches,
        self_signed: subject == issuer,
        subject,
        issuer,
        names,
        not_after: x509.validity().not_after.timestamp(),
        checked_name,
        trust: trusted(der, &tls.chain[1..], &as_name, now),
    })
}

/// Whether the certificate name `pattern` (`mx.example.org` or `*.example.org`) covers `name`.
fn covers(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// Whether this machine's CAs trust the chain for `name`: `Ok` or the reason.
fn trusted(
    end: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("this machine has no CA certificates to check it with".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .map_err(|e| e.to_string())?;
    use rustls::client::danger::ServerCertVerifier;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    verifier
        .verify_server_cert(end, intermediates, name, &[], at)
        .map(|_| ())
        .map_err(|e| why_untrusted(&e, name))
}

/// A certificate error in an administrator's words.
fn why_untrusted(e: &rustls::Error, name: &ServerName<'_>) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = e else {
        return e.to_string();
    };
    match c {
        C::UnknownIssuer => "issued by a CA this machine does not know".into(),
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("not valid for {}", name.to_str())
        }
        C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => {
            "a self-signed CA certificate, used as the server's own".into()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn certificate_names_cover_the_name_asked_as_a_client_checks() {
        use super::covers;
        assert!(covers("MX.example.test", "mx.example.TEST"));
        assert!(covers("*.example.test", "mx.example.test"));
        assert!(!covers("*.example.test", "a.mx.example.test"));
        assert!(!covers("*.example.test", "example.test"));
        assert!(!covers("mx.example.test", "mx2.example.test"));
    }
}
