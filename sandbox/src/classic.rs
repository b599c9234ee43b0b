//! The classic chain as the sandbox's autoscaler (`--autoscaler classic`): on the real control
//! plane, instead of a SurgeScaler, the seed's ScaledObject for the app, served by
//! Prometheus (scraping the app pods' Envoys every 15 s) and KEDA (built from its module), and
//! acted on by the real kube-controller-manager's HPA. The chart is still installed and the
//! pods still carry Surge's filter, so both systems run the very same pods; with no SurgeScaler
//! the scaler writes nothing. The processes themselves: `surge_classic`.

use std::path::Path;

use surge_classic::keda::{Keda, kubectl};
use surge_classic::prometheus::{Prometheus, SCRAPE_INTERVAL_S, Scrape};
use surge_classic::scaled_object::{self, Query, Settings};

use crate::run::{NAMESPACE, RunError, WORKLOAD};
use crate::scenario::Scenario;

/// Which autoscaler drives the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Autoscaler {
    /// Surge: the SurgeScaler, the scaler pod, the filter's reports.
    #[default]
    Surge,
    /// The classic chain with the corrected query (`sum(rate(...[1m]))`, threshold = the
    /// scenario's per-replica target). Real control plane only.
    Classic,
    /// The classic chain with the seed's literal query (the counter, no `rate()`).
    ClassicLiteral,
}

impl Autoscaler {
    /// The ScaledObject's query, for the classic chain.
    pub fn query(self) -> Option<Query> {
        match self {
            Self::Surge => None,
            Self::Classic => Some(Query::Rate1m),
            Self::ClassicLiteral => Some(Query::Literal),
        }
    }

    /// Who writes the app's scale: the user the API server's audit log names.
    pub fn writer(self, surge: &str) -> String {
        match self {
            Self::Surge => surge.to_owned(),
            // The controller-manager runs each controller with its own ServiceAccount.
            Self::Classic | Self::ClassicLiteral => {
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler".to_owned()
            }
        }
    }
}

impl Autoscaler {
    /// What drove the app, in words, for the summary and `result.json`.
    pub fn describe(self, scenario: &Scenario) -> String {
        let Some(query) = self.query() else {
            return "Surge: the SurgeScaler, the scaler pod, the filter's reports".into();
        };
        let mut settings = Settings::seed(WORKLOAD, NAMESPACE, "", scenario.scaler.target);
        settings.query = query;
        format!(
            "the classic chain: Prometheus {} scraping every {SCRAPE_INTERVAL_S} s, KEDA {} \
             (pollingInterval 1 s, threshold {} per replica, query {}), the HPA controller of \
             kube-controller-manager {} (15 s sync)",
            surge_classic::components::prometheus_version(),
            surge_classic::components::keda_version(),
            scenario.scaler.target,
            scaled_object::query(&settings),
            surge_cluster::components::kubernetes_version()
        )
    }
}

/// Prometheus and KEDA, running; stopped when dropped.
#[derive(Debug)]
pub struct ClassicChain {
    prometheus: Prometheus,
    _keda: Keda,
    query: String,
}

impl ClassicChain {
    /// Starts Prometheus and KEDA (files under `dir`) and applies the app's ScaledObject.
    pub async fn start(
        plane: &surge_cluster::ControlPlane,
        pod_network_octet: u8,
        scenario: &Scenario,
        query: Query,
        dir: &Path,
    ) -> Result<Self, RunError> {
        let setup = |what: &'static str| {
            move |e: surge_classic::ClassicError| RunError::Setup(format!("{what}: {e}"))
        };
        let prometheus = Prometheus::start(
            &dir.join("prometheus"),
            &Scrape {
                kubeconfig: plane.admin_kubeconfig().to_path_buf(),
                namespace: NAMESPACE.into(),
                pod_network_octet,
                interval_s: SCRAPE_INTERVAL_S,
            },
        )
        .await
        .map_err(setup("start Prometheus"))?;
        let keda = Keda::start(plane, &dir.join("keda"))
            .await
            .map_err(setup("start KEDA"))?;
        let mut settings = Settings::seed(
            WORKLOAD,
            NAMESPACE,
            &format!("http://{}", prometheus.addr()),
            scenario.scaler.target,
        );
        settings.query = query;
        // The same bounds as the SurgeScaler of the scenario (the seed's are 1..10, as are the
        // standard scenarios').
        settings.min_replicas = scenario.scaler.min_replicas.max(1);
        settings.max_replicas = scenario.scaler.max_replicas;
        let object = scaled_object::manifest(&settings);
        kubectl(plane, &["apply", "-f", "-"], Some(&object.to_string()))
            .map_err(setup("apply the ScaledObject"))?;
        Ok(Self {
            prometheus,
            _keda: keda,
            query: scaled_object::query(&settings),
        })
    }

    /// The query KEDA asks Prometheus.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Prometheus.
    pub fn prometheus(&self) -> &Prometheus {
        &self.prometheus
    }
}
