//! Ambient mode's side of a loop: which waypoint serves the target's Service
//! ([`crate::waypoint::bound_waypoint`] on its labels, else its namespace's), read every
//! [`REFRESH`] and handed to the hub, which counts that waypoint's routes for the target and
//! refuses any other's.
//!
//! The namespace is read only when this replica may (the chart grants `get namespaces` only
//! cluster-wide; with `--watch-namespaces` it has no cluster-scoped rights): then only a
//! Service's own `istio.io/use-waypoint` label binds it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::runtime::events::EventType;

use super::TargetLoop;
use crate::metrics::Operation;
use crate::waypoint::{WaypointRef, bound_waypoint};

/// How often the binding is read again (a relabelled Service or namespace is followed within
/// this).
const REFRESH: Duration = Duration::from_secs(30);

/// How soon a failed read is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What a loop keeps of its target's waypoint.
#[derive(Debug, Default)]
pub(super) struct WaypointLoop {
    read_at: Option<Instant>,
    /// The binding as last read (`None` inside: no waypoint serves the Service).
    bound: Option<Option<WaypointRef>>,
}

impl TargetLoop {
    /// Reads the binding of `sources.waypoint.service` when due; clears it when the spec has
    /// no waypoint source.
    pub(super) async fn refresh_waypoint(&mut self) {
        let Some(source) = self.scaler.spec.sources.waypoint.clone() else {
            if self.waypoint.bound.take().is_some() {
                self.ctx.hub.set_waypoint(&self.key, None);
            }
            self.waypoint.read_at = None;
            return;
        };
        if self.waypoint.read_at.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        let namespace = self.key.namespace.clone();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let service_labels = match self
            .ctx
            .call(Operation::get_service, services.get(&source.service))
            .await
        {
            Ok(service) => service.metadata.labels.unwrap_or_default(),
            Err(error) if error.code() == Some(404) => Default::default(),
            Err(error) => {
                tracing::warn!(target = %self.key, %error, service = source.service,
                    "could not read the Service; its waypoint stays as last read");
                self.waypoint.read_at = Some(Instant::now() - REFRESH + RETRY);
                return;
            }
        };
        let namespace_labels = if self.ctx.read_namespaces
            && !service_labels.contains_key(crate::waypoint::USE_WAYPOINT)
        {
            let namespaces: Api<Namespace> = Api::all(self.ctx.client.clone());
            match self
                .ctx
                .call(Operation::get_namespace, namespaces.get(&namespace))
                .await
            {
                Ok(ns) => Some(ns.metadata.labels.unwrap_or_default()),
                Err(error) if error.code() == Some(404) => Some(Default::default()),
                Err(error) => {
                    tracing::warn!(target = %self.key, %error,
                        "could not read the namespace; its waypoint stays as last read");
                    self.waypoint.read_at = Some(Instant::now() - REFRESH + RETRY);
                    return;
                }
            }
        } else {
            None
        };
        let bound = bound_waypoint(&namespace, &service_labels, namespace_labels.as_ref());
        self.waypoint.read_at = Some(Instant::now());
        if self.waypoint.bound.as_ref() == Some(&bound) {
            return;
        }
        self.ctx.hub.set_waypoint(&self.key, bound.clone());
        self.waypoint.bound = Some(bound.clone());
        match bound {
            Some(waypoint) => {
                tracing::info!(target = %self.key, %waypoint, service = source.service,
                    "waypoint reports for the Service count");
                self.publish(
                    EventType::Normal,
                    "WaypointBound",
                    "Sources",
                    format!(
                        "Service {} is served by waypoint {waypoint}: its reports count, any \
                         other waypoint's are refused",
                        source.service
                    ),
                )
                .await;
            }
            None => {
                tracing::warn!(target = %self.key, service = source.service,
                    "no waypoint serves the Service; waypoint reports for it are refused");
                self.publish(
                    EventType::Warning,
                    "NoWaypoint",
                    "Sources",
                    format!(
                        "Service {} is bound to no waypoint (no istio.io/use-waypoint label on it{}): \
                         waypoint reports for it are refused",
                        source.service,
                        if self.ctx.read_namespaces {
                            " or its namespace"
                        } else {
                            "; with --watch-namespaces the namespace's label is not read"
                        }
                    ),
                )
                .await;
            }
        }
    }
}
