//! What every loop shares ([`Context`]: the client, the hub, the metrics, the clock, the Event
//! recorder and the timeouts), and how an API call fails ([`ApiError`]): each call gets its
//! own timeout and is counted in `surge_kube_api_errors_total` when it fails.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;

use super::{DEFAULT_WARM_DELAY_MS, FIELD_MANAGER};
use crate::clock::Clock;
use crate::decision::Millis;
use crate::hub::Hub;
use crate::metrics::{Metrics, Operation};
use crate::shard::Ownership;

/// A Kubernetes API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status.
    #[error("{operation:?}: HTTP {code}: {message}")]
    Status {
        /// The call.
        operation: Operation,
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// No answer within the timeout.
    #[error("{operation:?}: no answer within {timeout:?}")]
    Timeout {
        /// The call.
        operation: Operation,
        /// The timeout.
        timeout: Duration,
    },
    /// Transport or decoding failure.
    #[error("{operation:?}: {message}")]
    Other {
        /// The call.
        operation: Operation,
        /// What went wrong.
        message: String,
    },
}

impl ApiError {
    pub(super) fn code_label(&self) -> String {
        match self {
            Self::Status { code, .. } => code.to_string(),
            Self::Timeout { .. } => "timeout".into(),
            Self::Other { .. } => "error".into(),
        }
    }

    pub(super) fn operation(&self) -> Operation {
        match self {
            Self::Status { operation, .. }
            | Self::Timeout { operation, .. }
            | Self::Other { operation, .. } => *operation,
        }
    }

    /// The API server's own message (it names what was refused and why), or what went wrong
    /// on the way to it.
    pub(super) fn message(&self) -> String {
        match self {
            Self::Status { message, .. } | Self::Other { message, .. } => message.clone(),
            Self::Timeout { timeout, .. } => {
                format!("no answer from the API server within {timeout:?}")
            }
        }
    }

    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Everything the loops share.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Reports, windows and wake-ups.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The monotonic clock.
    pub clock: Clock,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Timeout of each API call.
    pub api_timeout: Duration,
    /// Slow decision tick.
    pub tick: Duration,
    /// Scale to zero: how long a first ready endpoint waits before the answers say warm.
    pub warm_delay_ms: Millis,
    /// Which targets this replica may write for (all of them when it runs alone).
    pub ownership: Arc<Ownership>,
    /// Whether this replica may read Namespaces (cluster-scoped; not with
    /// `--watch-namespaces`), for the waypoint a namespace's label names.
    pub read_namespaces: bool,
}

impl Context {
    /// A context with an Event recorder reporting as `surge-scaler`.
    pub fn new(
        client: Client,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        clock: Clock,
        api_timeout: Duration,
        tick: Duration,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), FIELD_MANAGER.to_owned().into());
        Self {
            client,
            hub,
            metrics,
            clock,
            recorder,
            api_timeout,
            tick,
            warm_delay_ms: DEFAULT_WARM_DELAY_MS,
            ownership: Arc::new(Ownership::everything()),
            read_namespaces: true,
        }
    }

    /// The same context reading Namespaces (for their waypoint labels) or not.
    pub fn with_namespace_reads(mut self, read_namespaces: bool) -> Self {
        self.read_namespaces = read_namespaces;
        self
    }

    /// The same context sharing the targets with other replicas as `ownership` says.
    pub fn with_ownership(mut self, ownership: Arc<Ownership>) -> Self {
        self.ownership = ownership;
        self
    }

    /// The same context with another warm delay (see [`DEFAULT_WARM_DELAY_MS`]).
    pub fn with_warm_delay(mut self, warm_delay_ms: Millis) -> Self {
        self.warm_delay_ms = warm_delay_ms;
        self
    }

    pub(super) async fn call<T>(
        &self,
        operation: Operation,
        future: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let result = match tokio::time::timeout(self.api_timeout, future).await {
            Err(_) => Err(ApiError::Timeout {
                operation,
                timeout: self.api_timeout,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(ApiError::Status {
                operation,
                code: status.code,
                message: status.message.clone(),
            }),
            Ok(Err(other)) => Err(ApiError::Other {
                operation,
                message: other.to_string(),
            }),
        };
        if let Err(error) = &result {
            self.metrics
                .api_error(error.operation(), &error.code_label());
        }
        result
    }
}
