//! What the operator of the injector chooses, as opposed to what each pod
//! asks for through its annotations.

/// Injector configuration: the same for every pod the injector sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the `rpf-sidecar` container, e.g. `ghcr.io/rpf-dev/rpf-sidecar:0.1.0`.
    pub image: String,
    /// `imagePullPolicy` of the sidecar container; `None` leaves the
    /// Kubernetes default (`IfNotPresent`, or `Always` for `:latest`).
    pub image_pull_policy: Option<String>,
    /// Whether the cluster supports native sidecars (init containers with
    /// `restartPolicy: Always`, on by default since Kubernetes 1.29). A pod
    /// can override this with the annotation `rpf.dev/native-sidecar`.
    pub native_sidecar: bool,
}

impl InjectConfig {
    /// A configuration with the given image, the default pull policy and
    /// classic (non-native) sidecars.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            native_sidecar: false,
        }
    }

    /// Sets whether the cluster supports native sidecars.
    #[must_use]
    pub fn with_native_sidecar(mut self, native: bool) -> Self {
        self.native_sidecar = native;
        self
    }

    /// Sets the sidecar's `imagePullPolicy`.
    #[must_use]
    pub fn with_image_pull_policy(mut self, policy: impl Into<String>) -> Self {
        self.image_pull_policy = Some(policy.into());
        self
    }
}
