//! Identities for the API server's clients that are not certificates: ServiceAccount tokens
//! from the TokenRequest API (what a kubelet projects into a Pod), written into kubeconfigs.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::control_plane::{ClusterError, Result, api};
use crate::kubeconfig::{self, Credentials};

/// A client from the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<Client> {
    client_configured(path, |_| {}).await
}

/// A client from the kubeconfig at `path` whose every call gives up after `timeout` (connect,
/// read and write; so not for long watches' idle streams, which kube re-opens).
pub async fn client_with_timeout(path: &Path, timeout: Duration) -> Result<Client> {
    client_configured(path, |config| {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
    })
    .await
}

async fn client_configured(path: &Path, configure: impl FnOnce(&mut Config)) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ClusterError::Io {
        context: format!("read {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Io {
            context: format!("load {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
    configure(&mut config);
    Client::try_from(config).map_err(api(format!("build a client from {}", path.display())))
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API.
pub async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
    bound_to: Option<BoundObjectReference>,
    lifetime: Duration,
) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: bound_to,
            expiration_seconds: Some(lifetime.as_secs() as i64),
        },
        ..TokenRequest::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .map_err(api(format!(
            "request a token for ServiceAccount {namespace}/{name}"
        )))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| ClusterError::Io {
            context: format!("token for ServiceAccount {namespace}/{name}"),
            source: std::io::Error::other("the TokenRequest answer has no status"),
        })
}

/// Writes a kubeconfig for ServiceAccount `namespace/name` whose token is read from
/// `token_file` (and re-read as it is renewed).
pub fn write_token_file_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    namespace: &str,
    name: &str,
    token_file: &Path,
) -> Result<()> {
    kubeconfig::write_file(
        path,
        server,
        ca_pem,
        &format!("system:serviceaccount:{namespace}:{name}"),
        &Credentials::TokenFile(token_file),
        namespace,
    )?;
    Ok(())
}
