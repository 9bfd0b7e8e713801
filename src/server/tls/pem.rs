//! [`TlsConfig::from_pem_files`]: a certificate chain and its key read from PEM files, and
//! [`TlsConfigError`], what can be wrong with them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{InconsistentKeys, ServerConfig};

use crate::server::tls::config::TlsConfig;

/// Why [`TlsConfig::from_pem_files`] could not load a certificate and its key. Each says
/// which file, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: io::Error,
    },
    /// A file is not valid PEM (a section without its end, bad base64).
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found wrong.
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{} holds no certificate (a PEM `CERTIFICATE` section)", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private key: no unencrypted PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) section. An encrypted key must be
    /// decrypted first.
    #[error(
        "{} holds no private key (an unencrypted PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or \
         `EC PRIVATE KEY` section)",
        path.display()
    )]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key is not the one of the certificate (the first of the chain): the two files
    /// do not go together.
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or the key for another reason (a key of a kind its
    /// crypto provider cannot sign with, say).
    #[error("TLS refused the certificate in {} or the key in {}: {source}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

impl TlsConfig {
    /// The TLS settings for the certificate chain in `cert` (PEM: the server's certificate
    /// first, then the intermediates, as a certificate authority delivers them, e.g. Let's
    /// Encrypt's `fullchain.pem`) and its private key in `key` (PEM: PKCS#8, PKCS#1 or
    /// SEC1, unencrypted), with rustls's safe defaults (TLS 1.3 and 1.2), no client
    /// certificates, and ALPN `h2` then `http/1.1`. The crypto provider is the process's
    /// default if the application installed one
    /// ([`CryptoProvider::install_default`](crate::rustls::crypto::CryptoProvider::install_default),
    /// e.g. aws-lc-rs for post-quantum key exchange), else `ring`, which the feature builds.
    ///
    /// The files are read once, here: a renewed certificate takes a new `TlsConfig` (and,
    /// for a server already serving, a restart, or [`from_rustls`](Self::from_rustls) with
    /// a certificate resolver of one's own).
    ///
    /// # Errors
    ///
    /// A [`TlsConfigError`] that names the file and what was wrong: unreadable, not PEM,
    /// no certificate in it, no key in it, a key that does not match the certificate.
    ///
    /// ```
    /// use websocket_handler::{TlsConfig, TlsConfigError};
    ///
    /// let dir = std::env::temp_dir().join(format!("wsh-doc-pem-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let not_a_certificate = dir.join("cert.pem");
    /// std::fs::write(&not_a_certificate, "hello\n").unwrap();
    /// match TlsConfig::from_pem_files(&not_a_certificate, dir.join("key.pem")) {
    ///     Err(TlsConfigError::NoCertificate { path }) => assert_eq!(path, not_a_certificate),
    ///     other => panic!("{other:?}"),
    /// }
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = read_chain(cert)?;
        let private_key = read_key(key)?;
        let rejected = |source: rustls::Error| match source {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsConfigError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            source => TlsConfigError::Rejected {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            },
        };
        let config = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(rejected)?;
        Ok(TlsConfig::from_rustls(Arc::new(config)))
    }
}

/// The process's default crypto provider if the application installed one, else ring.
/// Not `ServerConfig::builder()`'s choice from the crate features built: that panics when
/// another crate in the build enables aws-lc-rs too.
fn crypto_provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return installed.clone();
    }
    // ring is the one provider the `tls` feature builds. rustls 0.23.48 deprecates it for
    // its lack of post-quantum key exchange: an application that wants that installs
    // another provider (aws-lc-rs), which is then used above.
    #[allow(deprecated)]
    Arc::new(ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in the PEM file, in order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in the PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: path.to_owned(),
        },
        source => TlsConfigError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}
