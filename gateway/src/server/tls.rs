//! TLS for clients: `wss://` and `https://` on the server's one listener, from a
//! PEM certificate chain and private key that can be reloaded without a
//! restart.
//!
//! The certificate sits behind a [`ResolvesServerCert`] holding the current
//! [`CertifiedKey`]: [`ServerTls::reload`] swaps it, so handshakes from then on
//! present the new certificate while established connections (their keys are
//! agreed) carry on untouched. A reload that fails (a missing file, bad PEM, a
//! key that does not match the certificate) changes nothing and says why.
//!
//! rustls with the `ring` provider, the same as the gossip endpoint
//! (`chorus_engine::runtime::tls`); TLS 1.2 and 1.3, ALPN `http/1.1` (the
//! WebSocket upgrade and LongPoll are HTTP/1.1).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The PEM files of the client-facing certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any
    /// intermediates (`server.tls_cert`).
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`server.tls_key`).
    pub key: PathBuf,
}

/// Why a certificate or key could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or a malformed one.
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) could be read{}", detail(.reason))]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said, if anything.
        reason: Option<String>,
    },
    /// The file holds no PEM private key, or one rustls cannot use.
    #[error("{path}: no usable PEM private key (PKCS#8, RSA or EC) could be read{}", detail(.reason))]
    Key {
        /// The file.
        path: PathBuf,
        /// What the parser or rustls said, if anything.
        reason: Option<String>,
    },
    /// The key is not the certificate's.
    #[error("{key}: this private key does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn detail(reason: &Option<String>) -> String {
    reason.as_ref().map_or(String::new(), |r| format!(": {r}"))
}

/// The client-facing TLS of a [`Server`](super::Server): the acceptor, and the
/// certificate it presents, reloadable. Cheap to share (`Arc`).
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the certificate and key; an error names the file.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = provider();
        let key = certified_key(&files, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again: new handshakes present what they now hold, open
    /// connections are untouched. On an error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.files, &provider())?;
        *self.current.0.write().expect("certificate lock") = Arc::new(key);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate presented to every client, swapped by a reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: files.cert.clone(),
            reason: Some(e.to_string()),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: files.cert.clone(),
            reason: None,
        });
    }
    let pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => None,
            e => Some(e.to_string()),
        },
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: files.key.clone(),
            reason: Some(e.to_string()),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // ring reports the public key of every key type it loads; `Unknown`
        // would only mean it cannot tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and key for `localhost`, as PEM.
    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chorus-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn presented(tls: &ServerTls) -> Vec<u8> {
        tls.current.0.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn loads_a_pair_and_names_the_file_it_cannot_use() {
        let d = dir();
        let (cert, key) = pair();
        let files = TlsFiles {
            cert: write(&d, "cert.pem", &cert),
            key: write(&d, "key.pem", &key),
        };
        ServerTls::load(files.clone()).expect("a good pair loads");

        let missing = TlsFiles {
            cert: d.join("nope.pem"),
            ..files.clone()
        };
        let e = ServerTls::load(missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("cannot read"), "{e}");

        let garbage = TlsFiles {
            cert: write(&d, "garbage.pem", "not a certificate"),
            ..files.clone()
        };
        let e = ServerTls::load(garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("no PEM certificate"),
            "{e}"
        );

        // The certificate given as the key.
        let swapped = TlsFiles {
            key: files.cert.clone(),
            ..files.clone()
        };
        let e = ServerTls::load(swapped).unwrap_err().to_string();
        assert!(e.contains("cert.pem") && e.contains("private key"), "{e}");

        let (_, other_key) = pair();
        let mismatched = TlsFiles {
            key: write(&d, "other.pem", &other_key),
            ..files
        };
        let e = ServerTls::load(mismatched).unwrap_err().to_string();
        assert!(
            e.contains("other.pem") && e.contains("does not belong"),
            "{e}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let d = dir();
        let (cert, key) = pair();
        let files = TlsFiles {
            cert: write(&d, "cert.pem", &cert),
            key: write(&d, "key.pem", &key),
        };
        let tls = ServerTls::load(files.clone()).unwrap();
        let first = presented(&tls);

        // Half-written: a new certificate with the old key.
        let (cert2, key2) = pair();
        write(&d, "cert.pem", &cert2);
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert_eq!(presented(&tls), first, "a failed reload keeps the old");

        write(&d, "key.pem", &key2);
        tls.reload().expect("the new pair loads");
        assert_ne!(
            presented(&tls),
            first,
            "a reload presents the new certificate"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
