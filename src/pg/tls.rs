//! TLS for duplex's own PostgreSQL connections, with libpq's meaning of the URL's
//! `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (the driver knows only disable, prefer
//! and require, and nothing of certificates):
//!
//! | sslmode | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always | no; against `sslrootcert` when one is given (as libpq) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and naming the host (name or IP) |
//!
//! `sslcert` with `sslkey` present a client certificate. Built on rustls through
//! `tokio-postgres-rustls`; the same settings go into the subscriptions' connection strings
//! (the servers connect with libpq), see `replication::setup`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values duplex accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, unverified.
    #[default]
    Prefer,
    /// Always TLS; verified only against an explicit `sslrootcert`.
    Require,
    /// Always TLS, certificate signed by `sslrootcert`.
    VerifyCa,
    /// Always TLS, certificate signed by `sslrootcert` and naming the host.
    VerifyFull,
}

impl Mode {
    /// Parse an `sslmode` value.
    pub fn parse(v: &str) -> Option<Mode> {
        Some(match v {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            _ => return None,
        })
    }

    /// As written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// What the driver is told: it only decides whether TLS is tried or required.
    pub fn driver(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// The TLS settings of one database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `sslmode`.
    pub mode: Mode,
    /// `sslrootcert`: CA certificates (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// The URL query keys this module owns (removed before the driver parses the URL).
pub const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Settings {
    /// Read the TLS keys of `query` (`key=value` pairs of a URL). Unknown `sslmode` values
    /// and a verify mode without a CA file are errors that say what to write instead.
    pub fn from_query<'a>(
        query: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
    ) -> Result<Settings, String> {
        let mut s = Settings::default();
        for (k, v) in query {
            match k.as_ref() {
                "sslmode" => {
                    s.mode = Mode::parse(&v).ok_or_else(|| {
                        format!("sslmode={v} is not one of disable, prefer, require, verify-ca, verify-full")
                    })?
                }
                "sslrootcert" => s.root_cert = Some(PathBuf::from(v.as_ref())),
                "sslcert" => s.cert = Some(PathBuf::from(v.as_ref())),
                "sslkey" => s.key = Some(PathBuf::from(v.as_ref())),
                _ => {}
            }
        }
        if matches!(s.mode, Mode::VerifyCa | Mode::VerifyFull) && s.root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert=<file with the CA certificate(s) that signed the server's certificate>",
                s.mode.as_str()
            ));
        }
        if s.cert.is_some() != s.key.is_some() {
            return Err(
                "sslcert and sslkey go together: give both files of the client certificate, or neither"
                    .into(),
            );
        }
        Ok(s)
    }

    /// The connector for these settings; files are read now, so a missing or unreadable
    /// one is reported before any connection is tried.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let verify = match (self.mode, &self.root_cert) {
            (Mode::VerifyFull, Some(ca)) => Some((ca, true)),
            (Mode::VerifyCa | Mode::Require, Some(ca)) => Some((ca, false)),
            _ => None,
        };
        let builder = match verify {
            Some((ca, check_name)) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {} holds no usable CA certificate (PEM)",
                        ca.display()
                    ));
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        chain: Some(webpki),
                        check_name,
                        provider,
                    }))
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    chain: None,
                    check_name: false,
                    provider,
                })),
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// libpq's checks: the chain against the CA file when there is one (`chain`), the host
/// name only for verify-full (`check_name`); handshake signatures always.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(query: &str) -> Result<Settings, String> {
        let url = url::Url::parse(&format!("postgres://h/db?{query}")).unwrap();
        Settings::from_query(url.query_pairs())
    }

    #[test]
    fn every_libpq_mode_is_read_and_others_are_refused_by_name() {
        assert_eq!(settings("").unwrap().mode, Mode::Prefer);
        assert_eq!(settings("sslmode=require").unwrap().mode, Mode::Require);
        assert_eq!(
            settings("sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap()
                .mode
                .driver(),
            SslMode::Require
        );
        let e = settings("sslmode=allowed").unwrap_err();
        assert!(e.contains("sslmode=allowed is not one of"), "{e}");
    }

    #[test]
    fn verification_without_a_ca_file_and_half_a_client_certificate_are_refused() {
        let e = settings("sslmode=verify-full").unwrap_err();
        assert!(e.contains("needs sslrootcert="), "{e}");
        let e = settings("sslcert=/c.pem").unwrap_err();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
    }

    #[test]
    fn a_missing_ca_file_is_named_before_connecting() {
        let s = settings("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = s.connector().err().expect("refused");
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
