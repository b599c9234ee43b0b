//! The ScaledObject of the seed's setup, in its two variants: the literal query (a counter with
//! no `rate()`, which never comes down) and the corrected one (`rate(...[1m])`, with the same
//! per-replica target Surge uses). Pure: a value in, a manifest out.
//!
//! The sandbox's Envoys are upstream Envoy, not Istio's proxy, so they have no
//! `istio_requests_total` (Istio's stats extension); the counter with the same meaning is the
//! inbound connection manager's `downstream_rq_completed`, which Istio's proxy also exports.
//! Both count a request when its response is done (an app's 503 included). The nearer name,
//! `downstream_rq_total`, counts it when it arrives: while a saturated pod's queue drains, the
//! two part by the backlog, and near the HPA's tolerance that can move where the chain stops
//! (docs/benchmarks/compare.md, "One overload rule, and the chain counting as Istio counts").

use serde_json::{Value, json};

/// Which query the Prometheus trigger asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `sum(<counter>)`: the seed's query, a running total that only grows.
    Literal,
    /// `sum(rate(<counter>[1m]))`: requests per second.
    Rate1m,
}

/// The ScaledObject's settings (the seed's: pollingInterval 1, cooldownPeriod 30, 1..10).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Deployment it scales (and the ScaledObject's name).
    pub workload: String,
    /// Their namespace.
    pub namespace: String,
    /// Where KEDA reaches Prometheus.
    pub prometheus: String,
    /// The query.
    pub query: Query,
    /// The trigger's `threshold`: per replica (an `AverageValue` target of the HPA).
    pub threshold: f64,
    /// KEDA's `pollingInterval`, seconds.
    pub polling_interval_s: u32,
    /// KEDA's `cooldownPeriod`, seconds.
    pub cooldown_period_s: u32,
    /// `minReplicaCount`.
    pub min_replicas: u32,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
}

impl Settings {
    /// The seed's settings for `workload`, with the corrected query and `threshold`.
    pub fn seed(workload: &str, namespace: &str, prometheus: &str, threshold: f64) -> Self {
        Self {
            workload: workload.into(),
            namespace: namespace.into(),
            prometheus: prometheus.into(),
            query: Query::Rate1m,
            threshold,
            polling_interval_s: 1,
            cooldown_period_s: 30,
            min_replicas: 1,
            max_replicas: 10,
        }
    }
}

/// The inbound listener's request counter of the workload's pods, as Prometheus labels it
/// (the scrape job adds `namespace` and `pod` from the pod's metadata). The sidecar's inbound
/// stat prefix, `inbound_0.0.0.0_8080`, holds dots, so Envoy's tag extraction keeps only
/// `inbound_0` as the prefix label and moves the rest into the name
/// (`envoy_http_0_0_0_8080_downstream_rq_completed`): the selector matches the name by pattern.
pub fn counter(workload: &str, namespace: &str) -> String {
    format!(
        "{{__name__=~\"envoy_http_.*downstream_rq_completed\",\
         envoy_http_conn_manager_prefix=~\"inbound.*\",namespace=\"{namespace}\",\
         pod=~\"{workload}-.*\"}}"
    )
}

/// The PromQL the trigger asks.
pub fn query(settings: &Settings) -> String {
    let counter = counter(&settings.workload, &settings.namespace);
    match settings.query {
        Query::Literal => format!("sum({counter})"),
        Query::Rate1m => format!("sum(rate({counter}[1m]))"),
    }
}

/// The ScaledObject (`keda.sh/v1alpha1`).
pub fn manifest(settings: &Settings) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": settings.workload, "namespace": settings.namespace},
        "spec": {
            "scaleTargetRef": {"name": settings.workload},
            "pollingInterval": settings.polling_interval_s,
            "cooldownPeriod": settings.cooldown_period_s,
            "minReplicaCount": settings.min_replicas,
            "maxReplicaCount": settings.max_replicas,
            "triggers": [{
                "type": "prometheus",
                "metadata": {
                    "serverAddress": settings.prometheus,
                    "query": query(settings),
                    "threshold": format_threshold(settings.threshold),
                },
            }],
        },
    })
}

/// KEDA reads `threshold` as a string holding a quantity or a number.
fn format_threshold(threshold: f64) -> String {
    if threshold.fract() == 0.0 && threshold.abs() < 1e15 {
        format!("{}", threshold as i64)
    } else {
        format!("{threshold}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_settings_and_both_queries() {
        let mut s = Settings::seed("app", "default", "http://127.0.0.1:9090", 70.0);
        let m = manifest(&s);
        assert_eq!(m["spec"]["pollingInterval"], 1);
        assert_eq!(m["spec"]["cooldownPeriod"], 30);
        assert_eq!(m["spec"]["minReplicaCount"], 1);
        assert_eq!(m["spec"]["maxReplicaCount"], 10);
        let trigger = &m["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "prometheus");
        assert_eq!(trigger["metadata"]["threshold"], "70");
        assert_eq!(
            trigger["metadata"]["query"],
            "sum(rate({__name__=~\"envoy_http_.*downstream_rq_completed\",\
             envoy_http_conn_manager_prefix=~\"inbound.*\",namespace=\"default\",\
             pod=~\"app-.*\"}[1m]))"
        );
        s.query = Query::Literal;
        s.threshold = 12.5;
        let m = manifest(&s);
        let q = m["spec"]["triggers"][0]["metadata"]["query"]
            .as_str()
            .unwrap();
        assert!(q.starts_with("sum({__name__=~") && !q.contains("rate("));
        assert_eq!(m["spec"]["triggers"][0]["metadata"]["threshold"], "12.5");
    }
}
