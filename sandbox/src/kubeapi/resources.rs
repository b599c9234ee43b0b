//! The resource types the embedded API serves: exactly the ones Surge reads or writes.

/// One served resource type (a row of the API's discovery documents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name used in paths.
    pub plural: &'static str,
    /// Kind of one object.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `/status` is a subresource (then writes to the main resource ignore `status`).
    pub status_subresource: bool,
    /// Whether `/scale` is a subresource (reads and writes `spec.replicas`).
    pub scale_subresource: bool,
    /// Whether `metadata.generation` is kept (bumped on spec changes).
    pub has_generation: bool,
    /// Whether this is a custom resource (strategic merge patch is refused, as for real CRDs).
    pub custom: bool,
}

impl ResourceType {
    /// `apiVersion` as written in objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` as the real API names the resource in its messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn builtin(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced: true,
        status_subresource: false,
        scale_subresource: false,
        has_generation: false,
        custom: false,
    }
}

/// Every type the embedded API serves.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        status_subresource: true,
        scale_subresource: true,
        has_generation: true,
        ..builtin("apps", "v1", "deployments", "Deployment")
    },
    ResourceType {
        status_subresource: true,
        scale_subresource: true,
        has_generation: true,
        ..builtin("apps", "v1", "statefulsets", "StatefulSet")
    },
    ResourceType {
        status_subresource: true,
        has_generation: true,
        custom: true,
        ..builtin("surge.dev", "v1alpha1", "surgescalers", "SurgeScaler")
    },
    builtin("", "v1", "events", "Event"),
    builtin("events.k8s.io", "v1", "events", "Event"),
    builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType {
        status_subresource: true,
        has_generation: true,
        ..builtin(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
        )
    },
    ResourceType {
        status_subresource: true,
        has_generation: true,
        custom: true,
        ..builtin("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
    },
    // Served by Karpenter 1.14+ (and the Cluster Autoscaler): the headroom Surge asks for.
    ResourceType {
        status_subresource: true,
        has_generation: true,
        custom: true,
        ..builtin(
            "autoscaling.x-k8s.io",
            "v1beta1",
            "capacitybuffers",
            "CapacityBuffer",
        )
    },
];

/// Finds a served type by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// `apps/v1` Deployments.
pub const DEPLOYMENTS: &ResourceType = &RESOURCES[0];
/// `surge.dev/v1alpha1` SurgeScalers.
pub const SURGESCALERS: &ResourceType = &RESOURCES[2];
/// `core/v1` Events.
pub const CORE_EVENTS: &ResourceType = &RESOURCES[3];
/// `events.k8s.io/v1` Events.
pub const EVENTS: &ResourceType = &RESOURCES[4];
/// `coordination.k8s.io/v1` Leases.
pub const LEASES: &ResourceType = &RESOURCES[5];
/// `autoscaling/v2` HorizontalPodAutoscalers.
pub const HPAS: &ResourceType = &RESOURCES[6];
/// `keda.sh/v1alpha1` ScaledObjects.
pub const SCALED_OBJECTS: &ResourceType = &RESOURCES[7];
