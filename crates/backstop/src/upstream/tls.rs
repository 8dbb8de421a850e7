//! TLS for outbound SMTP: opportunistic (like Postfix `smtp_tls_security_level = may` and
//! `encrypt`: the connection is encrypted, the server's certificate not checked against any
//! trust anchor or name), and verified (`secure`: the certificate must chain to this
//! machine's CAs or configured ones, and name the host; for `tls = "verify"` and MTA-STS).
//!
//! Responsible for: the rustls client configurations (aws-lc-rs, safe default protocol
//! versions, handshake signatures always verified, so the peer must hold the key of the
//! certificate it shows), clients around a certificate check of the caller's (DANE's), the
//! trust anchors, and the TLS server name for a host.
//! Not responsible for: deciding whether to use TLS, or falling back to plaintext when the
//! handshake fails (the caller does that on [`super::UpstreamError::Tls`]).

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// A connector that encrypts without verifying the server's certificate.
///
/// Uses the aws-lc-rs provider directly, so it does not depend on a process-default provider.
pub fn opportunistic_tls() -> TlsConnector {
    checked_tls(AnyCertificate)
}

/// Our own judgement of a server's certificate (the handshake's signatures are verified as
/// rustls does, whatever it says).
pub trait CertificateCheck: std::fmt::Debug + Send + Sync + 'static {
    /// Ok when `end_entity` (with `intermediates`, shown by `server_name`) is acceptable.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// A connector that accepts the certificates `check` accepts (aws-lc-rs, safe default
/// protocol versions).
pub fn checked_tls(check: impl CertificateCheck) -> TlsConnector {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = Checked {
        check,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A connector that accepts only a certificate that `roots` trust for the name connected to.
pub fn verified_tls(roots: Arc<rustls::RootCertStore>) -> TlsConnector {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// This machine's CAs, and those of `extra` (a PEM file) if given. An error only when
/// `extra` cannot be read; a machine without CAs gives an empty store (nothing verifies).
pub fn trust_roots(extra: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = match extra {
        Some(p) => crate::config::read_trust_anchors(p)?,
        None => rustls::RootCertStore::empty(),
    };
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(roots)
}

/// The name to present in the handshake for `host` (SNI is sent for DNS names only).
///
/// A host that is an IP address (brackets allowed) becomes that address; a host that is not a
/// valid DNS name falls back to `fallback` (typically the peer's address), so no SNI is sent.
pub fn server_name(host: &str, fallback: IpAddr) -> ServerName<'static> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(fallback.into()))
}

/// Accepts any certificate (the handshake must still be signed with its key).
#[derive(Debug)]
struct AnyCertificate;

impl CertificateCheck for AnyCertificate {
    fn check(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _now: UnixTime,
    ) -> Result<(), rustls::Error> {
        Ok(())
    }
}

/// A [`CertificateCheck`] as rustls asks for it, with the handshake's signatures verified.
#[derive(Debug)]
struct Checked<C> {
    check: C,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<C: CertificateCheck> ServerCertVerifier for Checked<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The address used when a name is neither a DNS name nor an IP address and no peer address is
/// known.
pub(super) const NO_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
