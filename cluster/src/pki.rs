//! The control plane's certificates and keys, made fresh for each cluster (as kubeadm's `certs`
//! phase does, with ECDSA P-256 keys): a cluster CA that signs the API server's serving
//! certificate and every client certificate, a front-proxy CA for the aggregation layer, and the
//! service-account signing key.
//!
//! Client identities are what the API server authenticates a certificate as: the subject's
//! common name is the user, its organizations are the groups (so `O=system:masters` is an
//! administrator, `CN=system:node:<name>, O=system:nodes` a kubelet).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Why the certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused a parameter or failed to sign.
    #[error("certificate {what}: {source}")]
    Sign {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, PkiError>;

fn sign_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Sign {
        what: what.to_owned(),
        source,
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl CertKey {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (the key readable by its owner only);
    /// returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write(&cert, &self.cert_pem, 0o644)?;
        write(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

/// Writes `text` to `path` with `mode`.
pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let error = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)
}

/// A certificate authority that signs leaf certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// Validity of every certificate: from a day before now (a clock a little behind still accepts
/// them) to 30 days on; the control plane lives for one test or one sandbox run.
fn validity(params: &mut CertificateParams) {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let day = Duration::from_secs(86_400);
    params.not_before = epoch + now.saturating_sub(day);
    params.not_after = epoch + now + 30 * day;
}

impl Authority {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_error("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        validity(&mut params);
        let key = KeyPair::generate().map_err(sign_error("CA key"))?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(sign_error("CA"))?;
        Ok(Self { issuer })
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's certificate (DER).
    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn serving(&self, common_name: &str, names: &[String]) -> Result<CertKey> {
        self.named(
            common_name,
            names,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A certificate for both ends of a mutual-TLS link (server and client use), for `names`:
    /// what KEDA's operator and metrics server each present on their gRPC link.
    pub fn peer(&self, common_name: &str, names: &[String]) -> Result<CertKey> {
        self.named(
            common_name,
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A leaf for `names` with the extended key `usages`.
    fn named(
        &self,
        common_name: &str,
        names: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<CertKey> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(sign_error(common_name))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = usages;
        self.leaf(common_name, params)
    }

    /// A client certificate: the API server authenticates it as user `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertKey> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_error(user))?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(user, params)
    }

    fn leaf(&self, what: &str, mut params: CertificateParams) -> Result<CertKey> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().map_err(sign_error(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(sign_error(what))?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Every certificate and key file of one control plane, under one folder.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The folder.
    pub dir: PathBuf,
    /// The cluster CA (clients trust it; it signs client certificates).
    pub ca_cert: PathBuf,
    /// The API server's serving certificate and key.
    pub apiserver: (PathBuf, PathBuf),
    /// The administrator's client certificate and key (`system:masters`).
    pub admin: CertKey,
    /// kube-controller-manager's client certificate and key.
    pub controller_manager: CertKey,
    /// kube-scheduler's client certificate and key.
    pub scheduler: CertKey,
    /// The controller-manager's and the scheduler's serving certificate and key (loopback), so
    /// that their `/healthz` is checked against the cluster CA rather than trusted blindly.
    pub component_serving: (PathBuf, PathBuf),
    /// The front-proxy CA, which aggregated API servers trust for the identity headers.
    pub front_proxy_ca_cert: PathBuf,
    /// The API server's client certificate toward aggregated API servers.
    pub front_proxy_client: (PathBuf, PathBuf),
    /// Service-account token signing key (private, PKCS#8) and its public key.
    pub service_account_key: PathBuf,
    /// The public half of [`Pki::service_account_key`].
    pub service_account_pub: PathBuf,
    ca: std::sync::Arc<Authority>,
}

impl Pki {
    /// Makes and writes every certificate; `serving_names` are the API server's names besides
    /// `localhost`, `127.0.0.1` and the in-cluster `kubernetes.default...` names.
    pub fn create(dir: &Path, serving_names: &[IpAddr]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca = Authority::new("surge-cluster-ca")?;
        let ca_cert = dir.join("ca.crt");
        write(&ca_cert, &ca.cert_pem(), 0o644)?;
        let mut names: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        names.extend(serving_names.iter().map(IpAddr::to_string));
        let apiserver = ca
            .serving("kube-apiserver", &names)?
            .write(dir, "apiserver")?;
        let component_serving = ca
            .serving(
                "surge-cluster-components",
                &["localhost".into(), "127.0.0.1".into()],
            )?
            .write(dir, "components")?;
        let admin = ca.client("surge-admin", &["system:masters"])?;
        let controller_manager = ca.client("system:kube-controller-manager", &[])?;
        let scheduler = ca.client("system:kube-scheduler", &[])?;

        let front_proxy = Authority::new("surge-front-proxy-ca")?;
        let front_proxy_ca_cert = dir.join("front-proxy-ca.crt");
        write(&front_proxy_ca_cert, &front_proxy.cert_pem(), 0o644)?;
        let front_proxy_client = front_proxy
            .client("front-proxy-client", &[])?
            .write(dir, "front-proxy-client")?;

        let sa = KeyPair::generate().map_err(sign_error("service-account key"))?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write(&service_account_key, &sa.serialize_pem(), 0o600)?;
        write(&service_account_pub, &sa.public_key_pem(), 0o644)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_cert,
            apiserver,
            component_serving,
            admin,
            controller_manager,
            scheduler,
            front_proxy_ca_cert,
            front_proxy_client,
            service_account_key,
            service_account_pub,
            ca: std::sync::Arc::new(ca),
        })
    }

    /// A new client certificate of the cluster CA, for user `user` in `groups` (a kubelet is
    /// `system:node:<node>` in `system:nodes`).
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertKey> {
        self.ca.client(user, groups)
    }

    /// The cluster CA's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// The cluster CA's certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.cert_der()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_written_with_private_keys_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("surge-pki-{}", std::process::id()));
        let pki = Pki::create(&dir, &["203.0.113.10".parse().unwrap()]).unwrap();
        for key in [
            &pki.apiserver.1,
            &pki.service_account_key,
            &pki.front_proxy_client.1,
        ] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let ca = std::fs::read_to_string(&pki.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert!(pki.admin.key_pem.contains("PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
