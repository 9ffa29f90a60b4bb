//! rpf's mutating admission webhook: injects the sidecar into opted-in pods.
