//! Prometheus metrics of the webhook, served at `/metrics`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `rpf_webhook_requests_total` | counter | `result` (`allowed`, `bad_request`) |
//! | `rpf_webhook_injections_total` | counter | |
//! | `rpf_webhook_skips_total` | counter | `reason` ([`rpf_inject::SkipReason::as_str`], `not_pod_create`) |
//! | `rpf_webhook_errors_total` | counter | `error_type` (`malformed_request`, `invalid_pod`, `serialize`) |
//! | `rpf_webhook_request_duration_seconds` | histogram | |
//! | `rpf_webhook_tls_reloads_total` | counter | `result` (`success`, `failure`) |

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set with a single label.
type Label = Vec<(&'static str, &'static str)>;

/// All metrics of one webhook process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Label, Counter>,
    injections: Counter,
    skips: Family<Label, Counter>,
    errors: Family<Label, Counter>,
    duration: Histogram,
    tls_reloads: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Label, Counter>::default();
        let injections = Counter::default();
        let skips = Family::<Label, Counter>::default();
        let errors = Family::<Label, Counter>::default();
        // 0.25 ms .. ~2 s: an admission review is answered from memory.
        let duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 14));
        let tls_reloads = Family::<Label, Counter>::default();
        // The `_total` suffix is added by the OpenMetrics encoder.
        registry.register(
            "rpf_webhook_requests",
            "AdmissionReview requests answered, by result",
            requests.clone(),
        );
        registry.register(
            "rpf_webhook_injections",
            "Pods the sidecar was injected into",
            injections.clone(),
        );
        registry.register(
            "rpf_webhook_skips",
            "Pods admitted without injection, by reason",
            skips.clone(),
        );
        registry.register(
            "rpf_webhook_errors",
            "Requests that could not be handled normally, by error type",
            errors.clone(),
        );
        registry.register(
            "rpf_webhook_request_duration_seconds",
            "Time to answer an AdmissionReview",
            duration.clone(),
        );
        registry.register(
            "rpf_webhook_tls_reloads",
            "Attempts to load changed TLS material, by result",
            tls_reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            injections,
            skips,
            errors,
            duration,
            tls_reloads,
        }
    }

    /// Counts an answered request.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&vec![("result", result)]).inc();
    }

    /// Counts an injection.
    pub fn injection(&self) {
        self.injections.inc();
    }

    /// Counts a pod admitted unchanged.
    pub fn skip(&self, reason: &'static str) {
        self.skips.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts an error.
    pub fn error(&self, error_type: &'static str) {
        self.errors
            .get_or_create(&vec![("error_type", error_type)])
            .inc();
    }

    /// Records how long a request took.
    pub fn observe_duration(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// Counts a TLS reload attempt.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.injection();
        m.skip("not_annotated");
        m.error("malformed_request");
        m.request("allowed");
        m.observe_duration(0.001);
        m.tls_reload(true);
        let text = m.encode();
        for needle in [
            "rpf_webhook_injections_total 1",
            "rpf_webhook_skips_total{reason=\"not_annotated\"} 1",
            "rpf_webhook_errors_total{error_type=\"malformed_request\"} 1",
            "rpf_webhook_requests_total{result=\"allowed\"} 1",
            "rpf_webhook_request_duration_seconds_count 1",
            "rpf_webhook_tls_reloads_total{result=\"success\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
