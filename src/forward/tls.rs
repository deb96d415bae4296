//! Upstream TLS: always verified (the platform's roots, or a CA file given for private deployments and
//! tests), optionally pinned per host to public keys (base64 SHA-256 of the certificate's
//! SubjectPublicKeyInfo): the API host by `SWITCHYARD_UPSTREAM_PINS`, the token endpoint's host by
//! `SWITCHYARD_OAUTH_PINS`. Every client that carries a token applies every pin, so no call to a pinned
//! host (proxying, usage and profile polls, API-key creation, token exchange and refresh) goes unchecked.
//! A pin mismatch fails the connection, closed.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("SWITCHYARD_UPSTREAM_PINS: {0:?} is not base64 of a 32-byte SHA-256")]
    BadPin(String),
    #[error("cannot read the upstream CA file {path}: {message}")]
    Ca { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// Parse pins: comma-separated base64 SHA-256 digests, optionally prefixed `sha256/`.
pub fn parse_pins(text: &str) -> Result<Vec<[u8; 32]>, TlsSetupError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let raw = p.strip_prefix("sha256/").unwrap_or(p);
            let bytes = STANDARD.decode(raw).map_err(|_| TlsSetupError::BadPin(p.to_owned()))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| TlsSetupError::BadPin(p.to_owned()))
        })
        .collect()
}

/// One DER element: its tag, its content, the whole element, and the rest of the input.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(..end)?, input.get(end..)?))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    let (_, body, _, _) = tlv(cert)?;
    let (_, tbs, _, _) = tlv(body)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.3;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    Some(tlv(rest)?.2)
}

/// The pin of a certificate: base64 SHA-256 of its SubjectPublicKeyInfo.
pub fn pin_of(cert: &[u8]) -> Option<String> {
    spki_of(cert).map(|spki| STANDARD.encode(Sha256::digest(spki)))
}

/// Pins by host name: a host listed here must present one of its keys; other hosts get plain validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPins {
    hosts: Vec<PinnedHost>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PinnedHost {
    host: String,
    pins: Vec<[u8; 32]>,
    /// The setting that pinned it, named in the mismatch error.
    setting: &'static str,
}

impl HostPins {
    /// Pin `host` (case-insensitive) to `pins`; no pins leaves it unpinned. A host pinned twice accepts
    /// either setting's keys.
    pub fn pin(&mut self, host: &str, pins: &[[u8; 32]], setting: &'static str) {
        if pins.is_empty() {
            return;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        match self.hosts.iter_mut().find(|h| h.host == host) {
            Some(known) => known.pins.extend_from_slice(pins),
            None => self.hosts.push(PinnedHost { host, pins: pins.to_vec(), setting }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The pinned hosts, for the start-up report.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.host.as_str())
    }

    fn of(&self, name: &ServerName<'_>) -> Option<&PinnedHost> {
        let host = match name {
            ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => return None,
        };
        self.hosts.iter().find(|h| h.host == host)
    }
}

#[derive(Debug)]
struct Pinned {
    inner: Arc<dyn ServerCertVerifier>,
    pins: HostPins,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let Some(host) = self.pins.of(server_name) else { return Ok(verified) };
        let digest: [u8; 32] = match spki_of(end_entity) {
            Some(spki) => Sha256::digest(spki).into(),
            None => return Err(rustls::Error::General(format!("the certificate of {} is unreadable", host.host))),
        };
        if host.pins.contains(&digest) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "the certificate's public key of {} does not match {}",
                host.host, host.setting
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client configuration when pins or a CA file ask for one; `None` keeps reqwest's default
/// (platform roots, full validation).
pub fn client_tls(pins: &HostPins, ca_file: Option<&Path>) -> Result<Option<rustls::ClientConfig>, TlsSetupError> {
    if pins.is_empty() && ca_file.is_none() {
        return Ok(None);
    }
    tls_config(pins, ca_file).map(Some)
}

/// The rustls client configuration for upstream connections: the platform's verifier, or the CA file's
/// roots, wrapped in the pin check when pins are set; h2 and HTTP/1.1 offered by ALPN.
pub fn tls_config(pins: &HostPins, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let base: Arc<dyn ServerCertVerifier> = match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsSetupError::Ca { path: path.display().to_string(), message: e.to_string() })?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::Ca { path: path.display().to_string(), message: e.to_string() })?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        }
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?,
        ),
    };
    let verifier: Arc<dyn ServerCertVerifier> =
        if pins.is_empty() { base } else { Arc::new(Pinned { inner: base, pins: pins.clone() }) };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spki_is_found_in_a_generated_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = certified.cert.der();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
        assert_eq!(spki_of(der), Some(spki.as_slice()));
        assert!(spki_of(b"\x30\x03\x02\x01").is_none());
        let pin = pin_of(der).unwrap();
        assert_eq!(parse_pins(&format!("sha256/{pin}, {pin}")).unwrap().len(), 2);
        assert!(parse_pins("abc").is_err());
    }

    #[test]
    fn pins_are_kept_by_host() {
        let mut pins = HostPins::default();
        pins.pin("API.example", &[[1; 32]], "SWITCHYARD_UPSTREAM_PINS");
        pins.pin("api.example", &[[2; 32]], "SWITCHYARD_OAUTH_PINS");
        pins.pin("[::1]", &[[3; 32]], "SWITCHYARD_OAUTH_PINS");
        pins.pin("unpinned.example", &[], "SWITCHYARD_OAUTH_PINS");
        assert_eq!(pins.hosts().collect::<Vec<_>>(), ["api.example", "::1"]);
        let api = pins.of(&ServerName::try_from("api.example").unwrap()).unwrap();
        assert_eq!(api.pins, [[1; 32], [2; 32]]);
        assert!(pins.of(&ServerName::try_from("::1").unwrap()).is_some());
        assert!(pins.of(&ServerName::try_from("other.example").unwrap()).is_none());
    }
}
