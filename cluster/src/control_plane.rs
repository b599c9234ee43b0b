//! Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback, the
//! way a kubeadm control-plane node runs them, and stops them with the harness.
//!
//! ```text
//!  etcd (127.0.0.1, --unsafe-no-fsync)
//!   ^
//!  kube-apiserver (https://localhost:<port>): client-cert and SA-token authentication,
//!   ^              Node + RBAC authorization, NodeRestriction, audit log, front proxy
//!   |
//!  kube-controller-manager, kube-scheduler (client certs, leader election off)
//!  you: the admin kubeconfig (system:masters), or a ServiceAccount's token kubeconfig
//! ```
//!
//! Every process is a child that dies with this one ([`crate::process`]): dropping the
//! [`ControlPlane`] kills them, and so does a `kill -9` of the harness. Their logs, certificates,
//! kubeconfigs and the audit log stay in the folder given at start, for reading afterwards.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::Api;

use crate::audit::{self, AuditLog};
use crate::components::{self, Missing};
use crate::kubeconfig::{self, Credentials};
use crate::launch::{await_ready, component_client, free_ports, get_ok, http_status, start};
use crate::pki::{Pki, PkiError};
use crate::process::{ChildGuard, ProcessError};
use crate::tokens::client_from;

/// The API server's advertised address (the `kubernetes` Service's endpoint). It must not be a
/// loopback address (Endpoints refuse those), and nothing here connects to it: clients use
/// `localhost`. It is from TEST-NET-3 (203.0.113.0/24, reserved for documentation), so unlikely
/// to be any machine's; were it one, nothing would change, as nothing sends to it.
pub const ADVERTISE_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
/// The Services' virtual IP range.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Why the control plane could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A component is not built.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// Certificates or kubeconfigs could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A process could not be started or watched.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A component exited or did not turn ready in time.
    #[error(
        "{component} did not turn ready within {timeout:?}: {reason}; its log ({log}) ends:\n{tail}"
    )]
    NotReady {
        /// Which component.
        component: String,
        /// How long it was given.
        timeout: Duration,
        /// Exited, or what the last probe said.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// A `kubectl` call failed.
    #[error("kubectl {args}: {stderr}")]
    Kubectl {
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// kube's error.
        source: kube::Error,
    },
}

pub(crate) type Result<T> = std::result::Result<T, ClusterError>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

pub(crate) fn api(context: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Api { context, source }
}

/// What to start besides etcd and the API server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder for certificates, kubeconfigs, etcd's data, logs and the audit log (created).
    pub dir: PathBuf,
    /// Start kube-controller-manager and kube-scheduler (Deployments, ReplicaSets, the HPA,
    /// garbage collection, ServiceAccounts, scheduling). A test of the API alone can do without.
    pub controllers: bool,
    /// Extra kube-apiserver flags.
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags.
    pub controller_manager_args: Vec<String>,
    /// How long each component may take to turn ready.
    pub ready_timeout: Duration,
}

impl Options {
    /// The whole control plane, its files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            controllers: true,
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
            ready_timeout: Duration::from_secs(90),
        }
    }
}

/// How long each start-up stage took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StartTimes {
    /// Certificates and keys.
    pub pki: Duration,
    /// etcd to healthy.
    pub etcd: Duration,
    /// kube-apiserver to `/readyz` 200.
    pub apiserver: Duration,
    /// kube-controller-manager and kube-scheduler to `/healthz` 200, and the `default`
    /// ServiceAccount made (the controllers are working).
    pub controllers: Duration,
    /// All of it.
    pub total: Duration,
}

/// A running control plane; dropping it kills every process.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: clients of the API server go first, etcd last.
    scheduler: Option<ChildGuard>,
    controller_manager: Option<ChildGuard>,
    apiserver: Option<ChildGuard>,
    // Held only to be killed last.
    _etcd: ChildGuard,
    dir: PathBuf,
    pki: Pki,
    apiserver_port: u16,
    apiserver_args: Vec<String>,
    admin_kubeconfig: PathBuf,
    ready_timeout: Duration,
    times: StartTimes,
}

impl ControlPlane {
    /// Makes the certificates and starts etcd, the API server and (with
    /// [`Options::controllers`]) the controller-manager and the scheduler; returns once each is
    /// ready.
    pub async fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        let mut times = StartTimes::default();
        let etcd_bin = components::etcd()?;
        let apiserver_bin = components::kubernetes("kube-apiserver")?;
        let dir = options.dir.clone();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;

        let pki = Pki::create(&dir.join("pki"), &[ADVERTISE_ADDRESS])?;
        times.pki = started.elapsed();

        let [etcd_client, etcd_peer, apiserver_port] =
            free_ports().map_err(io("pick etcd's and the API server's ports"))?;
        let etcd_log = logs.join("etcd.log");
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args: Vec<String> = vec![
            format!("--data-dir={}", dir.join("etcd").display()),
            "--name=surge".into(),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=surge={peer_url}"),
            // A test cluster's data need not survive a power cut; fsync would dominate writes.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd_stage = Instant::now();
        let mut etcd = start("etcd", &etcd_bin, &etcd_args, &etcd_log)?;
        await_ready(
            "etcd",
            &mut etcd,
            &etcd_log,
            options.ready_timeout,
            || async {
                match http_status(etcd_client, "/health") {
                    Some(200) => Ok(()),
                    other => Err(format!("/health answered {other:?}")),
                }
            },
        )
        .await?;
        times.etcd = etcd_stage.elapsed();

        let server = format!("https://localhost:{apiserver_port}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        kubeconfig::write_file(
            &admin_kubeconfig,
            &server,
            &pki.ca_pem(),
            "surge-admin",
            &Credentials::Certificate(&pki.admin),
            "default",
        )?;
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, audit::POLICY)
            .map_err(io(format!("write {}", audit_policy.display())))?;
        let mut apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={apiserver_port}"),
            format!("--advertise-address={ADVERTISE_ADDRESS}"),
            format!("--tls-cert-file={}", pki.apiserver.0.display()),
            format!("--tls-private-key-file={}", pki.apiserver.1.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                pki.service_account_pub.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // The aggregation layer (external metrics servers): the front proxy's identity.
            format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca_cert.display()
            ),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                pki.front_proxy_client.0.display()
            ),
            format!(
                "--proxy-client-key-file={}",
                pki.front_proxy_client.1.display()
            ),
            // No kube-proxy here: reach aggregated servers at their endpoints' addresses.
            "--enable-aggregator-routing=true".into(),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-format=json".into(),
            // Rotation (100 MB by default) would cut the record a long run reads back.
            "--audit-log-maxsize=100000".into(),
        ];
        apiserver_args.extend(options.apiserver_args.iter().cloned());

        let mut plane = Self {
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            _etcd: etcd,
            dir,
            pki,
            apiserver_port,
            apiserver_args,
            admin_kubeconfig,
            ready_timeout: options.ready_timeout,
            times,
        };
        let apiserver_stage = Instant::now();
        plane.start_apiserver_with(&apiserver_bin).await?;
        plane.times.apiserver = apiserver_stage.elapsed();

        if options.controllers {
            let controllers_stage = Instant::now();
            plane
                .start_controllers(&options.controller_manager_args)
                .await?;
            plane.times.controllers = controllers_stage.elapsed();
        }
        plane.times.total = started.elapsed();
        tracing::info!(times = ?plane.times, dir = %plane.dir.display(), "control plane ready");
        Ok(plane)
    }

    async fn start_apiserver_with(&mut self, binary: &Path) -> Result<()> {
        let log = self.dir.join("logs/kube-apiserver.log");
        let mut process = start("kube-apiserver", binary, &self.apiserver_args, &log)?;
        let client = self.client().await?;
        await_ready(
            "kube-apiserver",
            &mut process,
            &log,
            self.ready_timeout,
            || get_ok(&client, "/readyz"),
        )
        .await?;
        self.apiserver = Some(process);
        Ok(())
    }

    async fn start_controllers(&mut self, extra_kcm_args: &[String]) -> Result<()> {
        let kcm_bin = components::kubernetes("kube-controller-manager")?;
        let scheduler_bin = components::kubernetes("kube-scheduler")?;
        let server = self.server();
        let kcm_kubeconfig = self.dir.join("controller-manager.kubeconfig");
        kubeconfig::write_file(
            &kcm_kubeconfig,
            &server,
            &self.pki.ca_pem(),
            "system:kube-controller-manager",
            &Credentials::Certificate(&self.pki.controller_manager),
            "kube-system",
        )?;
        let scheduler_kubeconfig = self.dir.join("scheduler.kubeconfig");
        kubeconfig::write_file(
            &scheduler_kubeconfig,
            &server,
            &self.pki.ca_pem(),
            "system:kube-scheduler",
            &Credentials::Certificate(&self.pki.scheduler),
            "kube-system",
        )?;
        let [kcm_port, scheduler_port] =
            free_ports().map_err(io("pick the controller-manager's and scheduler's ports"))?;
        let kcm = |file: &Path| {
            let file = file.display();
            vec![
                format!("--kubeconfig={file}"),
                format!("--authentication-kubeconfig={file}"),
                format!("--authorization-kubeconfig={file}"),
            ]
        };
        let mut kcm_args = kcm(&kcm_kubeconfig);
        kcm_args.extend([
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--tls-cert-file={}", self.pki.component_serving.0.display()),
            format!(
                "--tls-private-key-file={}",
                self.pki.component_serving.1.display()
            ),
            "--leader-elect=false".into(),
            format!(
                "--service-account-private-key-file={}",
                self.pki.service_account_key.display()
            ),
            format!("--root-ca-file={}", self.pki.ca_cert.display()),
            // Each controller calls the API as its own ServiceAccount, as kubeadm sets it up.
            "--use-service-account-credentials=true".into(),
            "--cluster-name=surge".into(),
        ]);
        kcm_args.extend(extra_kcm_args.iter().cloned());
        let mut scheduler_args = kcm(&scheduler_kubeconfig);
        scheduler_args.extend([
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={scheduler_port}"),
            format!("--tls-cert-file={}", self.pki.component_serving.0.display()),
            format!(
                "--tls-private-key-file={}",
                self.pki.component_serving.1.display()
            ),
            "--leader-elect=false".into(),
        ]);
        let kcm_log = self.dir.join("logs/kube-controller-manager.log");
        let scheduler_log = self.dir.join("logs/kube-scheduler.log");
        let mut controller_manager =
            start("kube-controller-manager", &kcm_bin, &kcm_args, &kcm_log)?;
        let mut scheduler = start(
            "kube-scheduler",
            &scheduler_bin,
            &scheduler_args,
            &scheduler_log,
        )?;
        let kcm_client = component_client(kcm_port, self.pki.ca_der())?;
        await_ready(
            "kube-controller-manager",
            &mut controller_manager,
            &kcm_log,
            self.ready_timeout,
            || get_ok(&kcm_client, "/healthz"),
        )
        .await?;
        let scheduler_client = component_client(scheduler_port, self.pki.ca_der())?;
        await_ready(
            "kube-scheduler",
            &mut scheduler,
            &scheduler_log,
            self.ready_timeout,
            || get_ok(&scheduler_client, "/healthz"),
        )
        .await?;
        // The ServiceAccount controller makes `default` in every namespace; Pods cannot be
        // admitted in a namespace before it exists.
        let client = self.client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        await_ready(
            "kube-controller-manager (the default ServiceAccount)",
            &mut controller_manager,
            &kcm_log,
            self.ready_timeout,
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("no ServiceAccount default/default yet".into()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        self.controller_manager = Some(controller_manager);
        self.scheduler = Some(scheduler);
        Ok(())
    }

    /// `https://localhost:<port>`.
    pub fn server(&self) -> String {
        format!("https://localhost:{}", self.apiserver_port)
    }

    /// The folder of every file of this control plane.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The administrator's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The certificates.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// How long the start took, stage by stage.
    pub fn start_times(&self) -> StartTimes {
        self.times
    }

    /// The API server's audit log.
    pub fn audit_log(&self) -> AuditLog {
        AuditLog::new(self.dir.join("audit.log"))
    }

    /// A client with the administrator's identity.
    pub async fn client(&self) -> Result<Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// `kubectl` at the pinned version, with the administrator's kubeconfig.
    pub fn kubectl(&self) -> Result<Command> {
        let mut command = Command::new(components::kubernetes("kubectl")?);
        command.env("KUBECONFIG", &self.admin_kubeconfig);
        Ok(command)
    }

    /// helm, with the administrator's kubeconfig.
    pub fn helm(&self) -> Result<Command> {
        let mut command = Command::new(components::helm()?);
        command
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        Ok(command)
    }

    /// Writes a kubeconfig at `path` for user `user` in `groups`, with a client certificate of
    /// the cluster CA (a kubelet: `system:node:<name>` in `system:nodes`).
    pub fn certificate_kubeconfig(&self, path: &Path, user: &str, groups: &[&str]) -> Result<()> {
        Ok(kubeconfig::write_certificate(
            path,
            &self.server(),
            &self.pki,
            user,
            groups,
        )?)
    }

    /// Kills the API server at once (SIGKILL); etcd and the controllers keep running.
    pub fn kill_apiserver(&mut self) {
        if let Some(mut process) = self.apiserver.take() {
            let _ = process.kill();
        }
    }

    /// Starts the API server again, on the same port with the same certificates and data, and
    /// waits until it is ready.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.kill_apiserver();
        let binary = components::kubernetes("kube-apiserver")?;
        self.start_apiserver_with(&binary).await
    }
}
