//! HTTPS for the admin API: the server's acceptor from `DUPLEX_TLS_CERT`/`DUPLEX_TLS_KEY`,
//! and the CLI's connector that verifies the API's certificate against `DUPLEX_TLS_CA`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no certificate (PEM)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The API's TLS acceptor; the files are read now, so a bad one stops `duplex run` at
/// start with its name.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = certs(cert, "DUPLEX_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("DUPLEX_TLS_KEY {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("DUPLEX_TLS_CERT/DUPLEX_TLS_KEY: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector that trusts the CA certificate(s) in `ca` and checks the API's name.
pub fn connector(ca: &Path) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs(ca, "DUPLEX_TLS_CA")?);
    if added == 0 {
        return Err(format!(
            "DUPLEX_TLS_CA {} holds no usable CA certificate",
            ca.display()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
