//! HTTPS on the control plane's one listener, and the local CA of `wrenn up --domain`.
//!
//! The E2B SDKs given only `E2B_DOMAIN=D` call `https://api.D` and `https://<port>-<id>.D`:
//! always https, so the listener needs a certificate for `api.D` and `*.D`. Crypto is rustls
//! with the `ring` provider (the one sqlx already builds), passed explicitly so nothing
//! depends on a process-wide default. ALPN offers `http/1.1` only: the sandbox proxy routes
//! on the `Host` header, which HTTP/2 replaces with `:authority`.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
pub use wrenn_tls::TlsListener;

/// A PEM certificate chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {} with key {}: {reason}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("domain {domain:?}: {reason}")]
    Domain {
        domain: String,
        reason: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("make the local certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn provider() -> Arc<CryptoProvider> {
    wrenn_tls::provider()
}

/// Lower-cases `domain`, drops a trailing dot and checks it is a DNS name of two or more
/// labels (`api.` and `*.` are put in front of it).
pub fn normalize_domain(domain: &str) -> Result<String, TlsError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |reason| {
        Err(TlsError::Domain {
            domain: domain.to_owned(),
            reason,
        })
    };
    // Room for `api.` / `<port>-<20-char id>.` in front within DNS's 253.
    if d.is_empty() || d.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if !d.contains('.') {
        return bad("must have at least two labels, e.g. wrenn.example.com");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !d.split('.').all(label_ok) {
        return bad("labels are letters, digits and inner hyphens");
    }
    Ok(d)
}

/// The certificate chain of `path`, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(err("no PEM `CERTIFICATE` block".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)".into()
            }
            e => pem_reason(e),
        },
    })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM: {e}"),
    }
}

/// The rustls configuration of the listener; every problem names the file it is in.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let pair = |e: rustls::Error| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        // Checks that the key parses and belongs to the leaf certificate.
        .with_single_cert(certs, key)
        .map_err(pair)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether `chain` (leaf first) is valid for `name` at `at` when `ca` is the only root.
pub fn verify_chain(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    name: &str,
    at: UnixTime,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let name =
        ServerName::try_from(name.to_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_server_cert(leaf, rest, &name, &[], at)?;
    Ok(())
}

/// The files of `wrenn up --domain` under `<data-dir>/tls/`.
#[derive(Debug, Clone)]
pub struct LocalCerts {
    /// The CA certificate clients are told to trust.
    pub ca: PathBuf,
    pub files: TlsFiles,
    /// Made by this call (a client must trust the new CA), not reused.
    pub made: bool,
}

/// How long the generated certificates last: Apple's limit for TLS server certificates.
const VALIDITY: time::Duration = time::Duration::days(825);
/// Certificates that expire sooner than this are made anew at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Reuses `<dir>/{ca.pem,cert.pem,key.pem}` when they still serve `domain` (for a month at
/// least) and belong together; otherwise makes a new CA and a certificate for `domain`,
/// `api.<domain>` and `*.<domain>` signed by it. The CA is name-constrained to `domain` and
/// its key is never written down, so trusting it can vouch for nothing else.
pub fn ensure_local_certs(dir: &Path, domain: &str) -> Result<LocalCerts, TlsError> {
    let domain = normalize_domain(domain)?;
    let certs = LocalCerts {
        ca: dir.join("ca.pem"),
        files: TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        },
        made: false,
    };
    if local_certs_usable(&certs, &domain) {
        return Ok(certs);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
    let made = make_certs(&domain)?;
    write_file(&certs.files.key, &made.key, 0o600)?;
    write_file(&certs.files.cert, &made.cert, 0o644)?;
    write_file(&certs.ca, &made.ca, 0o644)?;
    Ok(LocalCerts {
        made: true,
        ..certs
    })
}

fn local_certs_usable(c: &LocalCerts, domain: &str) -> bool {
    let (Ok(ca), Ok(chain)) = (load_certs(&c.ca), load_certs(&c.files.cert)) else {
        return false;
    };
    let Some(at) = std::time::SystemTime::now().checked_add(RENEW_BEFORE) else {
        return false;
    };
    let at =
        UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default());
    [
        domain.to_owned(),
        format!("api.{domain}"),
        format!("1-x.{domain}"),
    ]
    .iter()
    .all(|name| verify_chain(&ca[0], &chain, name, at).is_ok())
        && server_config(&c.files).is_ok()
}

/// PEM text of a new CA, and of a server certificate and key signed by it.
struct MadeCerts {
    ca: String,
    cert: String,
    key: String,
}

fn make_certs(domain: &str) -> Result<MadeCerts, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
    };
    // A day back: clients whose clock is a little behind still accept them.
    let from = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let until = from + VALIDITY;

    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, format!("Wrenn local CA for {domain}"));
    ca.distinguished_name
        .push(DnType::OrganizationName, "Wrenn");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(domain.to_owned())],
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = from;
    ca.not_after = until;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(vec![
        domain.to_owned(),
        format!("api.{domain}"),
        format!("*.{domain}"),
    ])?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, domain.to_owned());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = from;
    leaf.not_after = until;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key))?;
    Ok(MadeCerts {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    wrenn_tls::selfsigned::write_pem(path, text, mode).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn generated_certificate_covers_the_domain_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        let c = ensure_local_certs(&tls, "Wrenn.Test.").expect("make");
        assert!(c.made);
        let ca = load_certs(&c.ca).expect("ca");
        let chain = load_certs(&c.files.cert).expect("cert");
        for name in [
            "wrenn.test",
            "api.wrenn.test",
            "49983-abcdefghij0123456789.wrenn.test",
        ] {
            verify_chain(&ca[0], &chain, name, now()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Outside the domain, and two labels deep: not covered.
        for name in ["wrenn.example", "a.b.wrenn.test", "api.wrenn.test.evil"] {
            assert!(verify_chain(&ca[0], &chain, name, now()).is_err(), "{name}");
        }
        // Not by another CA, and not after it expires.
        let other = dir.path().join("other");
        let o = ensure_local_certs(&other, "wrenn.test").expect("other");
        let other_ca = load_certs(&o.ca).expect("other ca");
        assert!(verify_chain(&other_ca[0], &chain, "api.wrenn.test", now()).is_err());
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now().as_secs() + 900 * 86400));
        assert!(verify_chain(&ca[0], &chain, "api.wrenn.test", later).is_err());
        server_config(&c.files).expect("serves");

        // Key 0600; a second call reuses the files.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&c.files.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = fs::read(&c.files.cert).expect("read");
        let again = ensure_local_certs(&tls, "wrenn.test").expect("again");
        assert!(!again.made);
        assert_eq!(fs::read(&again.files.cert).expect("read"), pem);
        // Another domain: made anew.
        let moved = ensure_local_certs(&tls, "other.test").expect("moved");
        assert!(moved.made);
        let ca = load_certs(&moved.ca).expect("ca");
        let chain = load_certs(&moved.files.cert).expect("cert");
        verify_chain(&ca[0], &chain, "api.other.test", now()).expect("other.test");
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(normalize_domain("Wrenn.TEST.").expect("ok"), "wrenn.test");
        for bad in ["", "localhost", "a..b", "-a.b", "a_b.c", "*.a.b", "a b.c"] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ensure_local_certs(dir.path(), "wrenn.test").expect("make");
        let msg = |files: &TlsFiles| match server_config(files) {
            Ok(_) => panic!("accepted {files:?}"),
            Err(e) => e.to_string(),
        };
        let missing = dir.path().join("missing.pem");
        let m = msg(&TlsFiles {
            cert: c.files.cert.clone(),
            key: missing.clone(),
        });
        assert!(
            m.contains("TLS key") && m.contains(&*missing.to_string_lossy()),
            "{m}"
        );
        let garbled = dir.path().join("garbled.pem");
        fs::write(
            &garbled,
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let m = msg(&TlsFiles {
            cert: c.files.cert.clone(),
            key: garbled.clone(),
        });
        assert!(
            m.contains("TLS key") && m.contains(&*garbled.to_string_lossy()),
            "{m}"
        );
        fs::write(&garbled, "hello\n").expect("write");
        let m = msg(&TlsFiles {
            cert: c.files.cert.clone(),
            key: garbled.clone(),
        });
        assert!(m.contains("no PEM private key"), "{m}");
        let m = msg(&TlsFiles {
            cert: garbled.clone(),
            key: c.files.key.clone(),
        });
        assert!(
            m.contains("TLS certificate") && m.contains(&*garbled.to_string_lossy()),
            "{m}"
        );
        // A key of another certificate.
        let other = tempfile::tempdir().expect("tempdir");
        let o = ensure_local_certs(other.path(), "wrenn.test").expect("other");
        let m = msg(&TlsFiles {
            cert: c.files.cert.clone(),
            key: o.files.key.clone(),
        });
        assert!(m.contains(&*o.files.key.to_string_lossy()), "{m}");
    }
}
