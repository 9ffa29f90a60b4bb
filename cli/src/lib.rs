//! rpf: reverse port-forward for Kubernetes (the user's command).
