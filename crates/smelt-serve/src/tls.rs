//! TLS to the remote model (`--remote https://...`): rustls over the `ring` provider (the stack
//! smelt's Flower client already builds), certificates checked against the system's trusted
//! roots (read where OpenSSL reads them, with `rustls-native-certs`) or, with `--remote-ca
//! FILE`, against that file's certificates only (a private gateway's own authority).
//!
//! The server's name for the certificate check (and SNI) is the URL's host: a DNS name or an IP
//! address, as a browser or `curl` would check it. No certificate check is ever skipped.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// What a TLS connection to one remote needs: the configured connector and the name its
/// certificate must carry.
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
    /// Where the trusted roots came from (for messages).
    pub roots: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).field("roots", &self.roots).finish()
    }
}

/// A TLS client for `host` (a DNS name or an IP address, no port), trusting `ca` (a PEM file of
/// one or more certificates) or else the system's roots.
pub fn client(host: &str, ca: Option<&Path>) -> Result<Tls, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a host name a certificate can carry: {e}"))?;
    let mut store = RootCertStore::empty();
    let roots = match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--remote-ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--remote-ca {}: not a PEM certificate file: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("--remote-ca {}: no usable certificate in it (a PEM file with -----BEGIN CERTIFICATE----- blocks)", path.display()));
            }
            format!("{} ({added} certificate{})", path.display(), if added == 1 { "" } else { "s" })
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no trusted root certificates were found on this system (install ca-certificates, or give the remote's authority with --remote-ca FILE)".into());
            }
            format!("the system's {added} trusted roots")
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name, roots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ca_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("smelt-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = client("localhost", Some(&empty)).unwrap_err();
        assert!(err.contains("no usable certificate"), "{err}");
        let err = client("localhost", Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        assert!(client("bad host name!", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
