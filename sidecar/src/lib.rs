//! rpf's in-pod sidecar: binds reverse ports in the pod and carries connections to the CLI.
