//! A host's own certificate: self-signed, made on first start and kept (key 0600 in a 0700
//! directory). Nobody checks its names or issuer — the control plane pins its fingerprint,
//! learnt at registration — so it never needs renewing; a new one means registering again.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pin;

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// The certificate file [`HostCert::ensure`] keeps in `dir` (PEM).
pub fn cert_path(dir: &Path) -> PathBuf {
    dir.join(CERT_FILE)
}

/// Its private key (PEM, 0600).
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
    #[error("make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate and its key, ready to serve.
#[derive(Debug)]
pub struct HostCert {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// [`pin::fingerprint`] of `cert`.
    pub fingerprint: String,
}

impl HostCert {
    /// Loads the certificate kept in `dir`, making it (and `dir`) first when there is none.
    pub fn ensure(dir: &Path) -> Result<HostCert, CertError> {
        let (cert_path, key_path) = (cert_path(dir), key_path(dir));
        if !cert_path.exists() || !key_path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CertError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(vec!["wrenn-agent".to_owned()])?;
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            params.not_after = params.not_before + time::Duration::days(365 * 100);
            let cert = params.self_signed(&key)?;
            // Key first: a crash between the two leaves no certificate without its key.
            write_file(&key_path, &key.serialize_pem(), 0o600)?;
            write_file(&cert_path, &cert.pem(), 0o644)?;
        }
        let bad = |path: &Path, e: rustls::pki_types::pem::Error| CertError::Bad {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| bad(&cert_path, e))?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| bad(&key_path, e))?;
        Ok(HostCert {
            fingerprint: pin::fingerprint(&cert),
            cert,
            key,
        })
    }

    /// A server configuration offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(pin::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    write_pem(path, text, mode).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a PEM file with `mode` through a temp file renamed into place, so a crash never
/// leaves half a file (or a key readable for a moment).
pub fn write_pem(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn made_once_then_kept_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = HostCert::ensure(&tls).unwrap();
        let b = HostCert::ensure(&tls).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join(KEY_FILE)), 0o600);
        let other = HostCert::ensure(&dir.path().join("other")).unwrap();
        assert_ne!(other.fingerprint, a.fingerprint);
    }

    /// A pinned client completes a handshake with the pinned certificate only.
    #[tokio::test]
    async fn pinned_clients_accept_only_their_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let served = HostCert::ensure(&dir.path().join("a")).unwrap();
        let other = HostCert::ensure(&dir.path().join("b")).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(served.server_config(&[]).unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = tcp.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let _ = tls.write_all(b"hi").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let connect = |fp: String| async move {
            let cfg = Arc::new(pin::client_config(&fp, &[]).unwrap());
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("10.9.9.9").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            let mut buf = String::new();
            tls.read_to_string(&mut buf).await?;
            Ok::<_, io::Error>(buf)
        };
        // Any name: the pin is the trust.
        assert_eq!(connect(served.fingerprint.clone()).await.unwrap(), "hi");
        assert!(connect(other.fingerprint.clone()).await.is_err());
    }
}
