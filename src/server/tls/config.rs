//! [`TlsConfig`]: the rustls settings every TLS connection of a server shares, with the
//! ALPN protocols that let HTTP/2 and HTTP/1.1 share a port.

use std::fmt;
use std::sync::Arc;

use rustls::ServerConfig;

/// ALPN protocol of HTTP/2.
pub(crate) const H2: &[u8] = b"h2";
/// ALPN protocol of HTTP/1.1.
pub(crate) const HTTP_1_1: &[u8] = b"http/1.1";

/// The TLS settings of a server (cargo feature `tls`): its certificate chain and key, and
/// how it negotiates, as a rustls [`ServerConfig`]. Made once when the program starts, from
/// PEM files ([`from_pem_files`](Self::from_pem_files)) or from a `ServerConfig` of one's own
/// ([`from_rustls`](Self::from_rustls)); cheap to clone (an `Arc`), and used by
/// [`WebSocketServer::serve_tls`](crate::WebSocketServer::serve_tls) and
/// [`ConnectionSlot::serve_tls`](crate::ConnectionSlot::serve_tls).
///
/// Clients choose HTTP/2 or HTTP/1.1 by ALPN: a browser takes HTTP/2 and opens its
/// WebSockets as streams of the page's connection (RFC 8441), other clients open theirs
/// with an HTTP/1.1 Upgrade, on the same port.
///
/// ```no_run
/// use websocket_handler::TlsConfig;
///
/// # fn main() -> Result<(), websocket_handler::TlsConfigError> {
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// assert_eq!(tls.server_config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl TlsConfig {
    /// The TLS settings of `config`, a rustls `ServerConfig` built by the application: for
    /// certificates that come from elsewhere than two files (a secret store, ACME, one per
    /// name with SNI), client certificates, another crypto provider, or session tickets.
    /// Build it with the [`rustls`](crate::rustls) this crate re-exports, so that its
    /// version is the one the crate takes.
    ///
    /// If `config` names no ALPN protocols, it gets `h2` then `http/1.1`, as
    /// [`from_pem_files`](Self::from_pem_files) sets them (the `ServerConfig` is copied to
    /// change it). If it names some, they are kept as they are, and:
    ///
    /// - a client that chooses `h2` is served HTTP/2, one that chooses `http/1.1` or offers
    ///   no ALPN at all HTTP/1.1;
    /// - rustls refuses the handshake of a client that offers ALPN protocols none of which
    ///   is in the list (so without `http/1.1` there, such HTTP/1.1 clients cannot connect);
    /// - a connection on which another protocol was agreed (`acme-tls/1`, say) is closed
    ///   once its handshake is done, with
    ///   [`TlsConnectionError::Protocol`](crate::TlsConnectionError::Protocol).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use websocket_handler::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    /// use websocket_handler::rustls::ServerConfig;
    /// use websocket_handler::TlsConfig;
    ///
    /// fn tls(
    ///     chain: Vec<CertificateDer<'static>>,
    ///     key: PrivateKeyDer<'static>,
    /// ) -> Result<TlsConfig, websocket_handler::rustls::Error> {
    ///     // The crypto provider the build has (ring, with this crate's feature alone).
    ///     let config = ServerConfig::builder()
    ///         .with_no_client_auth()
    ///         .with_single_cert(chain, key)?;
    ///     // No ALPN protocols set: h2 and http/1.1 are added.
    ///     Ok(TlsConfig::from_rustls(Arc::new(config)))
    /// }
    /// ```
    pub fn from_rustls(config: Arc<ServerConfig>) -> Self {
        if !config.alpn_protocols.is_empty() {
            return TlsConfig { config };
        }
        let mut config = Arc::unwrap_or_clone(config);
        // HTTP/2 first: browsers then open their WebSockets as streams of the page's
        // connection instead of a TCP connection each.
        config.alpn_protocols = vec![H2.to_vec(), HTTP_1_1.to_vec()];
        TlsConfig {
            config: Arc::new(config),
        }
    }

    /// The rustls settings, ALPN protocols included (`alpn_protocols`, in the server's order
    /// of preference).
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn: Vec<_> = self
            .config
            .alpn_protocols
            .iter()
            .map(|protocol| String::from_utf8_lossy(protocol))
            .collect();
        f.debug_struct("TlsConfig")
            .field("alpn_protocols", &alpn)
            .finish_non_exhaustive()
    }
}
