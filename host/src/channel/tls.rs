//! The rustls client configuration of a broker connection (kafka, rabbitmq):
//! the server's certificate must chain to `ca_file` (PEM) when given, else
//! to the Mozilla roots (webpki-roots); `cert_file` + `key_file` (PEM) add
//! a client certificate. Always rustls on `ring`, as everywhere else in the
//! gateway. A file that cannot be read or parsed is an `InvalidArgument`
//! naming the option, so a bad path stops the start with a clear message.

use crate::model::{Error, Result};
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Where a broker's TLS material comes from; `None` parts use the defaults.
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a str>,
    pub cert_file: Option<&'a str>,
    pub key_file: Option<&'a str>,
}

pub fn client_config(files: &TlsFiles<'_>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match files.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::invalid("ca_file", format!("{path}: {e}")))?;
            if certs.is_empty() {
                return Err(Error::invalid("ca_file", format!("{path}: no PEM certificate in it")));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| Error::invalid("ca_file", format!("{path}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("tls: {e}")))?
        .with_root_certificates(roots);
    let config = match (files.cert_file, files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::invalid("cert_file", format!("{cert}: {e}")))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::invalid("key_file", format!("{key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::invalid("cert_file", format!("{cert} with {key}: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(Error::invalid("cert_file", "\"cert_file\" and \"key_file\" go together")),
    };
    Ok(Arc::new(config))
}
