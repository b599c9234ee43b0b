//! The filter's configuration: the WasmPlugin's `pluginConfig` (a JSON object), parsed once in
//! `on_configure` into typed values with defaults, and validated so that a bad value is refused
//! with an error that names the field.
//!
//! The JSON is read with the small reader in [`crate::json`] and mapped field by field (rather
//! than with serde's derive and serde_json), which keeps about 70 KB out of the `.wasm`; the
//! mapping refuses unknown fields, wrong types and repeated fields, naming each.

use surge_wire::Role;

use crate::json::{self, Json};

/// The scaler's cluster as an Istio sidecar names the `surge-scaler` Service (port 8080, named
/// `http`) in namespace `surge-system`.
pub const DEFAULT_CLUSTER: &str = "outbound|8080||surge-scaler.surge-system.svc.cluster.local";

/// The `:authority` of report requests by default (the scaler Service's host).
pub const DEFAULT_AUTHORITY: &str = "surge-scaler.surge-system.svc.cluster.local";

/// Why a `pluginConfig` was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON at all.
    #[error("invalid pluginConfig: {0}")]
    Parse(#[from] json::JsonError),
    /// A field this filter does not know (a typo, or a field of a newer version).
    #[error("invalid pluginConfig: unknown field `{field}` (expected one of: {expected})")]
    UnknownField {
        /// The field's path, e.g. `surge.fctor`.
        field: String,
        /// The fields known at that level.
        expected: &'static str,
    },
    /// A field holds a value of the wrong type or outside its range.
    #[error("invalid pluginConfig: field `{field}`: {reason}")]
    Invalid {
        /// The field's path, e.g. `surge.factor`.
        field: &'static str,
        /// What is wrong, with the value found.
        reason: String,
    },
}

/// Surge detection settings (`surge` in `pluginConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct SurgeConfig {
    /// Send early when the recent arrival rate is at least the last reported rate times this
    /// factor (and clear of noise: see `surge::NOISE_SIGMAS`).
    pub factor: f64,
    /// Below this many requests per second no early report is sent (noise at low traffic).
    pub min_rps: f64,
    /// How often the reporter checks the recent rate, in milliseconds.
    pub check_period_ms: u64,
    /// The span the recent rate is measured over, in milliseconds.
    pub window_ms: u64,
    /// Least time between two early reports, in milliseconds, so a surge cannot flood the scaler.
    pub min_gap_ms: u64,
}

impl Default for SurgeConfig {
    fn default() -> Self {
        Self {
            factor: 1.5,
            min_rps: 5.0,
            check_period_ms: 100,
            window_ms: 200,
            min_gap_ms: 100,
        }
    }
}

/// Where the proxy sits, which decides what it counts and whether it holds requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRole {
    /// A workload's sidecar, inbound (Istio `SERVER` mode): counts what its own pod serves.
    Sidecar,
    /// An ingress gateway: counts what it forwards to each upstream cluster, and holds requests
    /// for cold destinations.
    Gateway,
    /// An ambient-mode waypoint (a WasmPlugin whose `targetRefs` name the waypoint): serves
    /// many Services, so it counts what it forwards to each Service's cluster
    /// (`inbound-vip|<port>|http|<host>`), and holds requests for cold destinations.
    Waypoint,
    /// A sidecar's outbound side (Istio `CLIENT` mode, a second WasmPlugin): counts nothing
    /// (the destination's own sidecar counts those requests) and holds requests for cold
    /// destinations.
    Client,
}

impl ProxyRole {
    /// The role reports carry: a client plugin is part of its pod's sidecar.
    pub fn wire(self) -> Role {
        match self {
            Self::Sidecar | Self::Client => Role::Sidecar,
            Self::Gateway => Role::Gateway,
            Self::Waypoint => Role::Waypoint,
        }
    }

    /// Whether this proxy counts its requests per route key.
    pub fn counts(self) -> bool {
        !matches!(self, Self::Client)
    }

    /// Whether this proxy holds requests for cold destinations: only roles that see requests
    /// to *other* workloads (a sidecar's inbound requests are already at their destination).
    pub fn holds(self) -> bool {
        !matches!(self, Self::Sidecar)
    }
}

/// Holding requests for cold destinations (`hold` in `pluginConfig`); see `crate::hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldConfig {
    /// Most requests held per destination across the proxy; beyond, a `503` at once.
    pub max_requests: u64,
    /// Longest a request is held, in milliseconds; then a `503`.
    pub timeout_ms: u64,
    /// The `Retry-After` of those `503`s, in seconds.
    pub retry_after_s: u64,
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            max_requests: 100,
            timeout_ms: 10_000,
            retry_after_s: 1,
        }
    }
}

/// How requests are grouped into route keys (`route_key` in `pluginConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKeyConfig {
    /// Use the virtual host's name when the route has no name (Istio leaves unnamed
    /// VirtualService routes empty).
    pub virtual_host_fallback: bool,
    /// Keep the upstream cluster in the key; when false every key's cluster is empty. The
    /// default follows the role: a gateway's clusters name the Services it forwards to (what
    /// gateway-fed targets select), while a sidecar's inbound cluster is always its own pod
    /// (`inbound|<port>||`) and reading it would cost a host call on every request.
    pub include_cluster: bool,
}

impl Default for RouteKeyConfig {
    /// The sidecar's defaults.
    fn default() -> Self {
        Self {
            virtual_host_fallback: true,
            include_cluster: false,
        }
    }
}

/// The whole `pluginConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Envoy cluster of the scaler.
    pub cluster: String,
    /// `:authority` of report requests.
    pub authority: String,
    /// `:path` of report requests.
    pub path: String,
    /// Bearer token sent as `authorization`; none when absent.
    pub token: Option<String>,
    /// Periodic report interval, in milliseconds.
    pub report_interval_ms: u64,
    /// Timeout of one report request, in milliseconds.
    pub timeout_ms: u64,
    /// Surge detection.
    pub surge: SurgeConfig,
    /// Route key options.
    pub route_key: RouteKeyConfig,
    /// Most distinct route keys per proxy; later ones are counted under `other`.
    pub max_routes: usize,
    /// Where this proxy sits.
    pub role: ProxyRole,
    /// Holding requests for cold destinations (gateway and client roles).
    pub hold: HoldConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster: DEFAULT_CLUSTER.into(),
            authority: DEFAULT_AUTHORITY.into(),
            path: surge_wire::REPORTS_PATH.into(),
            token: None,
            report_interval_ms: 1000,
            timeout_ms: 1000,
            surge: SurgeConfig::default(),
            route_key: RouteKeyConfig::default(),
            max_routes: 64,
            role: ProxyRole::Sidecar,
            hold: HoldConfig::default(),
        }
    }
}

const TOP_FIELDS: &str = "cluster, authority, path, token, report_interval_ms, timeout_ms, \
                          surge, route_key, max_routes, role, hold";
const SURGE_FIELDS: &str = "factor, min_rps, check_period_ms, window_ms, min_gap_ms";
const ROUTE_KEY_FIELDS: &str = "virtual_host_fallback, include_cluster";
const HOLD_FIELDS: &str = "max_requests, timeout_ms, retry_after_s";

/// Walks the members of an object, refusing a field given twice.
fn members<'a>(
    value: &'a Json,
    field: &'static str,
) -> Result<impl Iterator<Item = (usize, &'a str, &'a Json)>, ConfigError> {
    let Json::Object(members) = value else {
        return Err(wrong_type(field, "an object", value));
    };
    for (i, (key, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(k, _)| k == key) {
            return Err(ConfigError::UnknownField {
                field: format!("{}{key} (given twice)", prefix(field)),
                expected: "each field once",
            });
        }
    }
    Ok(members
        .iter()
        .enumerate()
        .map(|(i, (k, v))| (i, k.as_str(), v)))
}

fn prefix(field: &str) -> String {
    if field == "pluginConfig" {
        String::new()
    } else {
        format!("{field}.")
    }
}

fn wrong_type(field: &'static str, expected: &str, found: &Json) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: format!("expected {expected}, found {}", found.kind()),
    }
}

fn string(value: &Json, field: &'static str) -> Result<String, ConfigError> {
    match value {
        Json::String(s) => Ok(s.clone()),
        other => Err(wrong_type(field, "a string", other)),
    }
}

fn boolean(value: &Json, field: &'static str) -> Result<bool, ConfigError> {
    match value {
        Json::Bool(b) => Ok(*b),
        other => Err(wrong_type(field, "true or false", other)),
    }
}

fn number(value: &Json, field: &'static str) -> Result<f64, ConfigError> {
    match value {
        Json::Number(n) => Ok(n.value),
        other => Err(wrong_type(field, "a number", other)),
    }
}

fn unsigned(value: &Json, field: &'static str) -> Result<u64, ConfigError> {
    match value {
        Json::Number(json::Number {
            unsigned: Some(n), ..
        }) => Ok(*n),
        other => Err(wrong_type(field, "a non-negative integer", other)),
    }
}

fn unknown(parent: &'static str, key: &str, expected: &'static str) -> ConfigError {
    ConfigError::UnknownField {
        field: format!("{}{key}", prefix(parent)),
        expected,
    }
}

/// Longest surge window, in check periods: the reporter keeps a sample per check across it.
pub const MAX_WINDOW_CHECKS: u64 = 64;

/// Most route keys a proxy may track: the report limit minus one entry for `other`.
pub const MAX_ROUTES_LIMIT: usize = 255;

/// Largest `hold.max_requests`: with the per-VM cap on held entries
/// ([`crate::hold::MAX_HELD_PER_VM`]) it bounds the memory holding takes.
pub const MAX_HOLD_REQUESTS: u64 = 1000;

impl Config {
    /// Parses and validates `pluginConfig`; empty (or only whitespace) means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config = if bytes.iter().all(u8::is_ascii_whitespace) {
            Self::default()
        } else {
            Self::from_json(&json::parse(bytes)?)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Maps a parsed document onto the defaults, field by field.
    fn from_json(doc: &Json) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let mut include_cluster = None;
        for (_, key, value) in members(doc, "pluginConfig")? {
            match key {
                "cluster" => c.cluster = string(value, "cluster")?,
                "authority" => c.authority = string(value, "authority")?,
                "path" => c.path = string(value, "path")?,
                "token" => {
                    c.token = match value {
                        Json::Null => None,
                        other => Some(string(other, "token")?),
                    }
                }
                "report_interval_ms" => {
                    c.report_interval_ms = unsigned(value, "report_interval_ms")?
                }
                "timeout_ms" => c.timeout_ms = unsigned(value, "timeout_ms")?,
                "max_routes" => {
                    c.max_routes =
                        usize::try_from(unsigned(value, "max_routes")?).unwrap_or(usize::MAX)
                }
                "role" => {
                    c.role = match string(value, "role")?.as_str() {
                        "sidecar" => ProxyRole::Sidecar,
                        "gateway" => ProxyRole::Gateway,
                        "waypoint" => ProxyRole::Waypoint,
                        "client" => ProxyRole::Client,
                        other => {
                            return Err(ConfigError::Invalid {
                                field: "role",
                                reason: format!(
                                    "must be \"sidecar\", \"gateway\", \"waypoint\" or \"client\" \
                                     (got \"{other}\")"
                                ),
                            });
                        }
                    }
                }
                "hold" => {
                    for (_, key, value) in members(value, "hold")? {
                        let h = &mut c.hold;
                        match key {
                            "max_requests" => {
                                h.max_requests = unsigned(value, "hold.max_requests")?
                            }
                            "timeout_ms" => h.timeout_ms = unsigned(value, "hold.timeout_ms")?,
                            "retry_after_s" => {
                                h.retry_after_s = unsigned(value, "hold.retry_after_s")?
                            }
                            other => return Err(unknown("hold", other, HOLD_FIELDS)),
                        }
                    }
                }
                "surge" => {
                    for (_, key, value) in members(value, "surge")? {
                        let s = &mut c.surge;
                        match key {
                            "factor" => s.factor = number(value, "surge.factor")?,
                            "min_rps" => s.min_rps = number(value, "surge.min_rps")?,
                            "check_period_ms" => {
                                s.check_period_ms = unsigned(value, "surge.check_period_ms")?
                            }
                            "window_ms" => s.window_ms = unsigned(value, "surge.window_ms")?,
                            "min_gap_ms" => s.min_gap_ms = unsigned(value, "surge.min_gap_ms")?,
                            other => return Err(unknown("surge", other, SURGE_FIELDS)),
                        }
                    }
                }
                "route_key" => {
                    for (_, key, value) in members(value, "route_key")? {
                        let r = &mut c.route_key;
                        match key {
                            "virtual_host_fallback" => {
                                r.virtual_host_fallback =
                                    boolean(value, "route_key.virtual_host_fallback")?
                            }
                            "include_cluster" => {
                                include_cluster = Some(boolean(value, "route_key.include_cluster")?)
                            }
                            other => return Err(unknown("route_key", other, ROUTE_KEY_FIELDS)),
                        }
                    }
                }
                other => return Err(unknown("pluginConfig", other, TOP_FIELDS)),
            }
        }
        c.route_key.include_cluster =
            include_cluster.unwrap_or(matches!(c.role, ProxyRole::Gateway | ProxyRole::Waypoint));
        Ok(c)
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: String) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { field, reason })
        }
        // One message for every plain range, written once (each `format!` is code in the
        // module every VM loads).
        fn within(field: &'static str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                invalid(field, format!("must be within {lo}..={hi} (got {value})"))
            }
        }
        if self.cluster.is_empty() {
            return invalid("cluster", "must not be empty".into());
        }
        if self.authority.is_empty() {
            return invalid("authority", "must not be empty".into());
        }
        if !self.path.starts_with('/') {
            return invalid(
                "path",
                format!("must start with '/' (got \"{}\")", self.path),
            );
        }
        if let Some(token) = &self.token
            && (token.is_empty() || token.chars().any(|c| c.is_control() || c == ' '))
        {
            return invalid(
                "token",
                "must be non-empty, without spaces or control characters".into(),
            );
        }
        within("report_interval_ms", self.report_interval_ms, 50, 60_000)?;
        within("timeout_ms", self.timeout_ms, 10, 60_000)?;
        let surge = &self.surge;
        if !(surge.factor.is_finite() && surge.factor > 1.0) {
            return invalid(
                "surge.factor",
                format!("must be a number above 1 (got {})", decimal(surge.factor)),
            );
        }
        if !(surge.min_rps.is_finite() && surge.min_rps >= 0.0) {
            return invalid(
                "surge.min_rps",
                format!("must be a number >= 0 (got {})", decimal(surge.min_rps)),
            );
        }
        if !(10..=self.report_interval_ms).contains(&surge.check_period_ms) {
            return invalid(
                "surge.check_period_ms",
                format!(
                    "must be within 10..=report_interval_ms ({}) (got {})",
                    self.report_interval_ms, surge.check_period_ms
                ),
            );
        }
        // The reporter keeps one sample per check across the window (bounded memory).
        let longest_window = surge.check_period_ms.saturating_mul(MAX_WINDOW_CHECKS);
        if !(surge.check_period_ms..=longest_window.min(60_000)).contains(&surge.window_ms) {
            return invalid(
                "surge.window_ms",
                format!(
                    "must be within check_period_ms ({})..={} (at most {MAX_WINDOW_CHECKS} check \
                     periods and 60000) (got {})",
                    surge.check_period_ms,
                    longest_window.min(60_000),
                    surge.window_ms
                ),
            );
        }
        if surge.min_gap_ms > 60_000 {
            return invalid(
                "surge.min_gap_ms",
                format!("must be at most 60000 (got {})", surge.min_gap_ms),
            );
        }
        let hold = &self.hold;
        within("hold.max_requests", hold.max_requests, 1, MAX_HOLD_REQUESTS)?;
        within("hold.timeout_ms", hold.timeout_ms, 100, 120_000)?;
        within("hold.retry_after_s", hold.retry_after_s, 0, 3600)?;
        within(
            "max_routes",
            u64::try_from(self.max_routes).unwrap_or(u64::MAX),
            1,
            MAX_ROUTES_LIMIT as u64,
        )?;
        Ok(())
    }

    /// How long a reporter's lease lasts without renewal: long enough to ride out a few missed
    /// ticks, short enough that another VM takes over within about a second.
    pub fn lease_ms(&self) -> u64 {
        (self.surge.check_period_ms * 10).max(1000)
    }
}

/// Shows a float with up to three decimals. Hand-rolled because core's float formatting adds
/// about 20 KB to the .wasm, all for this one error message.
fn decimal(x: f64) -> String {
    if !x.is_finite() || x.abs() >= 1e15 {
        return "a non-finite or huge number".into();
    }
    let thousandths = (x.abs() * 1000.0).round() as u64;
    let sign = if x < 0.0 && thousandths > 0 { "-" } else { "" };
    let (whole, frac) = (thousandths / 1000, thousandths % 1000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{frac:03}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_defaults() {
        assert_eq!(Config::parse(b"").unwrap(), Config::default());
        assert_eq!(Config::parse(b"  \n").unwrap(), Config::default());
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn defaults_report_every_second_to_the_istio_named_scaler_cluster() {
        let config = Config::default();
        assert_eq!(config.report_interval_ms, 1000);
        assert_eq!(config.cluster, DEFAULT_CLUSTER);
        assert_eq!(config.path, "/v1/reports");
        assert_eq!(config.role, ProxyRole::Sidecar);
        assert_eq!(config.hold.max_requests, 100);
        assert_eq!(config.hold.timeout_ms, 10_000);
        assert_eq!(config.hold.retry_after_s, 1);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn every_field_can_be_set() {
        let config = Config::parse(
            br#"{"cluster":"c","authority":"a","path":"/p","token":"t","report_interval_ms":500,
                "timeout_ms":300,"surge":{"factor":3,"min_rps":1,"check_period_ms":50,
                "window_ms":100,"min_gap_ms":0},
                "route_key":{"virtual_host_fallback":false,"include_cluster":false},
                "max_routes":8,"role":"gateway",
                "hold":{"max_requests":5,"timeout_ms":2000,"retry_after_s":3}}"#,
        )
        .unwrap();
        assert_eq!(config.cluster, "c");
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(config.surge.factor, 3.0);
        assert!(!config.route_key.include_cluster);
        assert_eq!(config.max_routes, 8);
        assert_eq!(config.role, ProxyRole::Gateway);
        assert_eq!(
            config.hold,
            HoldConfig {
                max_requests: 5,
                timeout_ms: 2000,
                retry_after_s: 3
            }
        );
    }

    #[test]
    fn the_cluster_is_in_the_key_by_default_on_gateways_and_waypoints_only() {
        let parse = |json: &str| Config::parse(json.as_bytes()).unwrap().route_key;
        assert!(!parse("{}").include_cluster);
        assert!(!parse(r#"{"role":"client"}"#).include_cluster);
        assert!(parse(r#"{"role":"gateway"}"#).include_cluster);
        assert!(parse(r#"{"role":"waypoint"}"#).include_cluster);
        assert!(parse(r#"{"route_key":{"include_cluster":true}}"#).include_cluster);
        assert!(
            !parse(r#"{"route_key":{"include_cluster":false},"role":"gateway"}"#).include_cluster
        );
    }

    #[test]
    fn the_client_role_holds_and_counts_nothing_and_reports_as_its_sidecar() {
        let config = Config::parse(br#"{"role":"client"}"#).unwrap();
        assert_eq!(config.role, ProxyRole::Client);
        assert_eq!(config.role.wire(), Role::Sidecar);
        assert!(!config.role.counts() && config.role.holds());
        assert!(ProxyRole::Gateway.counts() && ProxyRole::Gateway.holds());
        assert!(ProxyRole::Waypoint.counts() && ProxyRole::Waypoint.holds());
        assert_eq!(ProxyRole::Waypoint.wire(), Role::Waypoint);
        assert_eq!(ProxyRole::Gateway.wire(), Role::Gateway);
        assert!(ProxyRole::Sidecar.counts() && !ProxyRole::Sidecar.holds());
        let err = Config::parse(br#"{"hold":{"max_request":3}}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `hold.max_request`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = Config::parse(br#"{"report_interval":5}"#).unwrap_err();
        assert!(err.to_string().contains("report_interval"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused_by_name() {
        let err = Config::parse(br#"{"surge":{"factor":"big"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pluginConfig: field `surge.factor`: expected a number, found a string"
        );
        let err = Config::parse(br#"{"report_interval_ms":1.5}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("`report_interval_ms`: expected a non-negative integer"),
            "{err}"
        );
        let err = Config::parse(br#"{"route_key":[]}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("`route_key`: expected an object, found an array"),
            "{err}"
        );
        let err = Config::parse(br#"{"role":"mesh"}"#).unwrap_err();
        assert!(err.to_string().contains("mesh"), "{err}");
    }

    #[test]
    fn unknown_nested_fields_and_repeated_fields_are_refused_by_name() {
        let err = Config::parse(br#"{"surge":{"fctor":3}}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `surge.fctor`"),
            "{err}"
        );
        assert!(err.to_string().contains("factor, min_rps"), "{err}");
        let err = Config::parse(br#"{"max_routes":1,"max_routes":2}"#).unwrap_err();
        assert!(
            err.to_string().contains("max_routes (given twice)"),
            "{err}"
        );
        let err = Config::parse(br#"[1]"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("`pluginConfig`: expected an object"),
            "{err}"
        );
    }

    #[test]
    fn a_null_token_means_none() {
        assert_eq!(Config::parse(br#"{"token":null}"#).unwrap().token, None);
    }

    #[test]
    fn non_json_is_refused() {
        assert!(matches!(
            Config::parse(b"interval: 1s"),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"cluster":""}"#, "cluster"),
            (r#"{"authority":""}"#, "authority"),
            (r#"{"path":"v1"}"#, "path"),
            (r#"{"token":"a b"}"#, "token"),
            (r#"{"report_interval_ms":10}"#, "report_interval_ms"),
            (r#"{"timeout_ms":0}"#, "timeout_ms"),
            (r#"{"surge":{"factor":1.0}}"#, "surge.factor"),
            (r#"{"surge":{"min_rps":-1}}"#, "surge.min_rps"),
            (
                r#"{"surge":{"check_period_ms":5}}"#,
                "surge.check_period_ms",
            ),
            (
                r#"{"report_interval_ms":100,"surge":{"check_period_ms":200}}"#,
                "surge.check_period_ms",
            ),
            (r#"{"surge":{"window_ms":50}}"#, "surge.window_ms"),
            (
                r#"{"surge":{"check_period_ms":10,"window_ms":650}}"#,
                "surge.window_ms",
            ),
            (r#"{"surge":{"min_gap_ms":100000}}"#, "surge.min_gap_ms"),
            (r#"{"max_routes":0}"#, "max_routes"),
            (r#"{"max_routes":1000}"#, "max_routes"),
            (r#"{"hold":{"max_requests":1001}}"#, "hold.max_requests"),
            (r#"{"hold":{"max_requests":0}}"#, "hold.max_requests"),
            (r#"{"hold":{"timeout_ms":99}}"#, "hold.timeout_ms"),
            (r#"{"hold":{"timeout_ms":120001}}"#, "hold.timeout_ms"),
            (r#"{"hold":{"retry_after_s":3601}}"#, "hold.retry_after_s"),
            (r#"{"hold":{"max_requests":-1}}"#, "hold.max_requests"),
        ];
        for (json, field) in cases {
            match Config::parse(json.as_bytes()) {
                Err(ConfigError::Invalid { field: found, .. }) => {
                    assert_eq!(found, *field, "{json}")
                }
                other => panic!("{json}: expected an error naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn floats_in_messages_are_shown_as_written() {
        assert_eq!(decimal(0.5), "0.5");
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(-1.25), "-1.25");
        assert_eq!(decimal(f64::NAN), "a non-finite or huge number");
        let err = Config::parse(br#"{"surge":{"factor":0.5}}"#).unwrap_err();
        assert!(err.to_string().ends_with("(got 0.5)"), "{err}");
    }

    /// The shipped WasmPlugins must carry a pluginConfig this filter accepts.
    #[test]
    fn the_shipped_wasmplugins_configs_are_valid() {
        let parse = |file: &str| {
            let path = format!("{}/../../istio/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let plugin_config = serde_json::to_vec(&yaml["spec"]["pluginConfig"]).unwrap();
            let config = Config::parse(&plugin_config).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(config.cluster, DEFAULT_CLUSTER, "{file}");
            config
        };
        let sidecar = parse("wasmplugin-sidecar.yaml");
        let gateway = parse("wasmplugin-gateway.yaml");
        let client = parse("wasmplugin-client.yaml");
        let waypoint = parse("wasmplugin-waypoint.yaml");
        assert_eq!(waypoint.role, ProxyRole::Waypoint);
        assert!(waypoint.route_key.include_cluster);
        assert_eq!(waypoint.hold, gateway.hold);
        assert_eq!(sidecar.role, ProxyRole::Sidecar);
        assert_eq!(gateway.role, ProxyRole::Gateway);
        assert_eq!(client.role, ProxyRole::Client);
        // The client plugin shares its sidecar's report stream: either may send a report.
        assert_eq!(
            (
                &client.authority,
                &client.path,
                client.report_interval_ms,
                client.timeout_ms,
                &client.surge,
            ),
            (
                &sidecar.authority,
                &sidecar.path,
                sidecar.report_interval_ms,
                sidecar.timeout_ms,
                &sidecar.surge,
            )
        );
    }

    #[test]
    fn lease_outlives_several_missed_checks() {
        let config = Config::default();
        assert!(config.lease_ms() >= 5 * config.surge.check_period_ms);
    }
}
