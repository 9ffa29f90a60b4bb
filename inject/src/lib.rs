//! Pure sidecar injection logic shared by rpf-webhook and rpf inject.
