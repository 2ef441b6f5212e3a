//! `--healthcheck`, for container health checks and scripts: asks the
//! server configured in the same environment for `/health` and reports
//! whether it answered 200.
//!
//! With `SYNC_TLS_CERT` set the server speaks only HTTPS, so the check does
//! too. It connects to the listen address (loopback for 0.0.0.0 or ::), so
//! no certificate name can match; instead it accepts exactly the
//! certificate in `SYNC_TLS_CERT` (with a valid handshake signature): it
//! knows it is talking to its own server, not to whatever else listens on
//! the port. A build without the `tls` feature refuses `SYNC_TLS_CERT` when
//! the settings are read, so it reports that, not a misleading "unhealthy".

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `Ok` on a 200 from `/health`; otherwise why not, for the operator.
pub fn check(config: &Config) -> Result<(), String> {
    let host = match config.host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ip => ip,
    };
    let addr = SocketAddr::new(host, config.port);
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("no server answers on {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {}health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        config.base_path
    );
    let head = match &config.tls {
        None => exchange(stream, request.as_bytes()),
        #[cfg(feature = "tls")]
        Some(tls) => https::exchange(stream, host, &tls.cert, request.as_bytes()),
        // Unreachable: without the feature, `Config::from_env` refuses SYNC_TLS_CERT.
        #[cfg(not(feature = "tls"))]
        Some(_) => Err(io::Error::other("this build has no HTTPS")),
    }
    .map_err(|e| format!("asking {addr} for {}health: {e}", config.base_path))?;
    match head.starts_with(b"HTTP/1.1 200") {
        true => Ok(()),
        false => Err(format!(
            "{addr} answered {:?} to {}health",
            String::from_utf8_lossy(&head),
            config.base_path
        )),
    }
}

/// Sends the request and reads the status line's first 12 bytes.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> io::Result<[u8; 12]> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head)
}

#[cfg(feature = "tls")]
mod https {
    use std::io;
    use std::net::{IpAddr, TcpStream};
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// `super::exchange` over TLS 1.2 or 1.3, trusting only `cert_file`'s
    /// first certificate.
    pub fn exchange(
        stream: TcpStream,
        host: IpAddr,
        cert_file: &Path,
        request: &[u8],
    ) -> io::Result<[u8; 12]> {
        let ours = CertificateDer::from_pem_file(cert_file)
            .map_err(|e| io::Error::other(format!("reading {}: {e}", cert_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = OurCertificate {
            ours,
            provider: Arc::clone(&provider),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connection = rustls::ClientConnection::new(Arc::new(config), ServerName::from(host))
            .map_err(io::Error::other)?;
        super::exchange(rustls::StreamOwned::new(connection, stream), request)
    }

    /// Accepts the server's certificate if it is the configured one.
    #[derive(Debug)]
    struct OurCertificate {
        ours: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for OurCertificate {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match end_entity.as_ref() == self.ours.as_ref() {
                true => Ok(ServerCertVerified::assertion()),
                false => Err(rustls::Error::General(
                    "the server's certificate is not the one in SYNC_TLS_CERT".into(),
                )),
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
