//! Certificates pinned by fingerprint.
//!
//! Neither side's certificate comes from a public CA: the agent makes its own, and the control
//! plane's may be local. So each side learns the other's certificate fingerprint (SHA-256 of
//! the DER) out of band — the agent's in its registration request (over a channel the
//! registration token and the control plane's pin already protect), the control plane's with
//! the registration token — and a client built here accepts exactly that certificate, whatever
//! names it carries, after checking the handshake signature proves its key.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Prefix of every fingerprint's text form: `sha256:` + 64 lower-case hex digits.
pub const PREFIX: &str = "sha256:";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("a certificate fingerprint is `sha256:` followed by 64 hex digits")]
    BadFingerprint,
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The fingerprint of a DER certificate, in its text form.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{PREFIX}{}", hex::encode(Sha256::digest(der)))
}

/// Checks and normalises a fingerprint given by a person or a peer (case, `:` separators as
/// `openssl x509 -fingerprint` prints them).
pub fn parse_fingerprint(s: &str) -> Result<String, PinError> {
    let s = s.trim();
    let hex_part = s
        .strip_prefix(PREFIX)
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PinError::BadFingerprint);
    }
    Ok(format!("{PREFIX}{}", digits.to_ascii_lowercase()))
}

/// The crypto provider of both sides (ring, as the rest of the workspace).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts only the certificate with `fingerprint`, offering
/// `alpn` (e.g. `h2`, `http/1.1`).
pub fn client_config(fingerprint: &str, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, PinError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCert {
        fingerprint: parse_fingerprint(fingerprint)?,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Accepts the one end-entity certificate whose fingerprint was pinned. Names, validity dates
/// and issuers do not matter: the pin was exchanged out of band, which is the trust a CA
/// would otherwise give; the signatures still prove the peer holds the certificate's key.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Not secret material: a plain comparison is fine.
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let fp = fingerprint(b"cert");
        assert!(fp.starts_with(PREFIX) && fp.len() == PREFIX.len() + 64);
        assert_eq!(parse_fingerprint(&fp).unwrap(), fp);
        let upper_colons = fp[PREFIX.len()..]
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{upper_colons}")).unwrap(),
            fp
        );
        for bad in ["", "sha256:", "sha256:xyz", &fp[..fp.len() - 1], "md5:00"] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
