//! DANE for SMTP (RFC 7672): a server's certificate checked against the DNSSEC-validated TLSA
//! records of its MX host name.
//!
//! Responsible for: which TLSA records are usable (DANE-EE and DANE-TA, certificate or public
//! key, exact or SHA-256/SHA-512: RFC 7672 §3.1; PKIX usages are not), and the TLS client that
//! accepts a certificate only when one of them matches: DANE-EE by the end-entity certificate
//! alone (no name, no expiry: §3.1.1), DANE-TA by a certificate of the presented chain, which
//! must then issue the end-entity certificate for the MX host name (§3.1.2).
//! Not responsible for: looking the records up or validating DNSSEC (`mx`), nor deciding when
//! DANE applies (`smtp`).

use crate::upstream::tls::CertificateCheck;
use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// The records RFC 7672 lets an SMTP client use.
pub fn usable(records: &[TLSA]) -> Vec<TLSA> {
    records
        .iter()
        .filter(|r| matches!(r.cert_usage, CertUsage::DaneTa | CertUsage::DaneEe))
        .filter(|r| matches!(r.selector, Selector::Full | Selector::Spki))
        .filter(|r| {
            matches!(
                r.matching,
                Matching::Raw | Matching::Sha256 | Matching::Sha512
            )
        })
        .cloned()
        .collect()
}

/// A TLS client that accepts only a certificate matching one of `records` (usable ones).
pub fn connector(records: Vec<TLSA>) -> TlsConnector {
    crate::upstream::tls::checked_tls(Dane {
        records,
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    })
}

/// Whether `cert` (DER) is what `r` names.
pub fn matches(r: &TLSA, cert: &[u8]) -> bool {
    let selected: Vec<u8> = match r.selector {
        Selector::Full => cert.to_vec(),
        Selector::Spki => match x509_parser::parse_x509_certificate(cert) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    let digest = |alg| aws_lc_rs::digest::digest(alg, &selected).as_ref().to_vec();
    let data = match r.matching {
        Matching::Raw => selected.clone(),
        Matching::Sha256 => digest(&aws_lc_rs::digest::SHA256),
        Matching::Sha512 => digest(&aws_lc_rs::digest::SHA512),
        _ => return false,
    };
    data == r.cert_data
}

#[derive(Debug)]
struct Dane {
    records: Vec<TLSA>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Dane {
    /// DANE-TA: a certificate of the chain that a record names, trusted as the root that
    /// must issue `end` for `name`.
    fn by_trust_anchor(
        &self,
        end: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let tas = self
            .records
            .iter()
            .filter(|r| r.cert_usage == CertUsage::DaneTa);
        for r in tas {
            for (i, ta) in intermediates.iter().enumerate() {
                if !matches(r, ta) {
                    continue;
                }
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(ta.clone()).is_err() {
                    continue;
                }
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build();
                let Ok(verifier) = verifier else { continue };
                let below = &intermediates[..i];
                if verifier
                    .verify_server_cert(end, below, name, &[], now)
                    .is_ok()
                {
                    return true;
                }
            }
        }
        false
    }
}

impl CertificateCheck for Dane {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let ee = self
            .records
            .iter()
            .filter(|r| r.cert_usage == CertUsage::DaneEe)
            .any(|r| matches(r, end_entity));
        if ee || self.by_trust_anchor(end_entity, intermediates, server_name, now) {
            return Ok(());
        }
        Err(rustls::Error::General(
            "no TLSA record matches the certificate (DANE)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_by_certificate_or_public_key_and_pkix_usages_are_not_usable() {
        let made = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
        let der = made.cert.der().to_vec();
        use rcgen::PublicKeyData;
        let spki = made.signing_key.subject_public_key_info();
        let sha256 = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
        let ee_spki = TLSA::new(
            CertUsage::DaneEe,
            Selector::Spki,
            Matching::Sha256,
            sha256(&spki).as_ref().to_vec(),
        );
        let ee_full = TLSA::new(
            CertUsage::DaneEe,
            Selector::Full,
            Matching::Raw,
            der.clone(),
        );
        let wrong = TLSA::new(
            CertUsage::DaneEe,
            Selector::Spki,
            Matching::Sha256,
            vec![0; 32],
        );
        let pkix = TLSA::new(
            CertUsage::PkixEe,
            Selector::Spki,
            Matching::Sha256,
            vec![0; 32],
        );
        assert!(matches(&ee_spki, &der));
        assert!(matches(&ee_full, &der));
        assert!(!matches(&wrong, &der));
        let all = [ee_spki.clone(), pkix, wrong.clone()];
        assert_eq!(usable(&all), vec![ee_spki, wrong]);
    }
}
