//! Test certificates: a CA and a server certificate it issued for `127.0.0.1` and
//! `localhost`, written as PEM files (the key 0600) for `--tls-cert`, `--tls-key`,
//! `--tls-ca` and `tls_ca=`.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// The names every test server certificate is issued for.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// PEM files of one test CA and one server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// Generate a CA named `name` and a server certificate for [`SERVER_NAMES`] into
    /// `directory` (created): `name-ca.pem`, `name-server.pem`, `name-server.key`.
    pub fn generate(directory: &Path, name: &str) -> Result<TestPki> {
        std::fs::create_dir_all(directory)?;
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("cudele test CA {name}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().context("server key")?;
        let names: Vec<String> = SERVER_NAMES.iter().map(|name| name.to_string()).collect();
        let mut server_params = CertificateParams::new(names).context("server parameters")?;
        server_params.distinguished_name.push(DnType::CommonName, "cudele test server");
        let server_cert = server_params.signed_by(&server_key, &issuer).context("server certificate")?;

        let pki = TestPki {
            ca: directory.join(format!("{name}-ca.pem")),
            cert: directory.join(format!("{name}-server.pem")),
            key: directory.join(format!("{name}-server.key")),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, server_cert.pem())?;
        crate::write_secret_file(&pki.key, server_key.serialize_pem())?;
        Ok(pki)
    }

    /// `--tls-cert CERT --tls-key KEY` for an MDS or a replica.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_string(),
            self.cert.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ]
    }

    /// The client side: the CA.
    pub fn client_tls(&self) -> Result<cudele_proto::transport::ClientTls> {
        Ok(cudele_proto::transport::ClientTls::from_ca_file(&self.ca)?)
    }
}
