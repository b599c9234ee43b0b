//! kubeconfig files for the control plane's users: certificate users (the administrator, the
//! controller-manager, the scheduler, a kubelet) and token users (a ServiceAccount, through the
//! TokenRequest API). Written as JSON, which is YAML, so kubectl, helm and kube-rs read them.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::pki::{CertKey, Pki, PkiError, write};

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credentials<'a> {
    /// A client certificate and its key.
    Certificate(&'a CertKey),
    /// A bearer token.
    Token(&'a str),
    /// A bearer token kept in a file, re-read by the client (kube-rs: about every minute), so
    /// that whoever writes the file can renew it.
    TokenFile(&'a Path),
}

/// The kubeconfig document for `server` (trusting `ca_pem`), user `user`, default `namespace`.
pub fn document(
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &Credentials<'_>,
    namespace: &str,
) -> Value {
    let user_entry = match credentials {
        Credentials::Certificate(cert) => json!({
            "client-certificate-data": STANDARD.encode(&cert.cert_pem),
            "client-key-data": STANDARD.encode(&cert.key_pem),
        }),
        Credentials::Token(token) => json!({ "token": token }),
        Credentials::TokenFile(path) => json!({ "tokenFile": path.display().to_string() }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "surge",
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_pem),
            },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "surge",
            "context": { "cluster": "surge", "user": user, "namespace": namespace },
        }],
        "current-context": "surge",
    })
}

/// Writes [`document`] to `path`, readable by its owner only (it holds a credential).
pub fn write_file(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &Credentials<'_>,
    namespace: &str,
) -> Result<(), PkiError> {
    let text =
        serde_json::to_string_pretty(&document(server, ca_pem, user, credentials, namespace))
            .unwrap_or_default();
    write(path, &text, 0o600)
}

/// Writes a kubeconfig at `path` for user `user` in `groups` of `server`, with a client
/// certificate of `pki`'s CA (a kubelet: `system:node:<name>` in `system:nodes`).
pub fn write_certificate(
    path: &Path,
    server: &str,
    pki: &Pki,
    user: &str,
    groups: &[&str],
) -> Result<(), PkiError> {
    let cert = pki.client(user, groups)?;
    write_file(
        path,
        server,
        &pki.ca_pem(),
        user,
        &Credentials::Certificate(&cert),
        "default",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_kubeconfig_names_the_server_and_namespace_and_embeds_the_ca() {
        let doc = document(
            "https://localhost:6443",
            "CA PEM",
            "system:serviceaccount:surge-system:surge-scaler",
            &Credentials::Token("abc"),
            "surge-system",
        );
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://localhost:6443"
        );
        assert_eq!(
            doc["clusters"][0]["cluster"]["certificate-authority-data"],
            STANDARD.encode("CA PEM")
        );
        assert_eq!(doc["users"][0]["user"]["token"], "abc");
        assert_eq!(doc["contexts"][0]["context"]["namespace"], "surge-system");
    }
}
