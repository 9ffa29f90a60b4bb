//! `rpf doctor [TARGET] [SPEC...]`: the troubleshooting steps, automated.
//!
//! Each step is a check that passes, fails, warns or is skipped, with the
//! evidence and the next step ([`report`]), in this order: the API server
//! and credentials, RBAC ([`access`]); the webhook ([`webhook`], its
//! certificates in [`certs`]); the target's pods, injection and sidecar
//! ([`pod`]); the control port both ways and the sidecar's version
//! ([`transport`]); an end-to-end probe ([`probe`]); each SPEC's local
//! target ([`local`]). A step that cannot be taken because an earlier one
//! failed is skipped with that reason, so the first failure is the one to
//! fix. The run fails (exit 1) when any check failed; warnings do not.

mod access;
mod certs;
mod local;
mod pod;
mod probe;
pub mod report;
mod transport;
mod webhook;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::args::DoctorArgs;
use crate::cluster::{preflight, Target, Transport};
use crate::spec::PortSpec;
use report::{Check, Report};

/// The check ids, in the order they are printed (docs/doctor.md).
mod names {
    pub const API_SERVER: &str = "api-server";
    pub const RBAC: &str = "rbac";
    pub const RBAC_EXPOSE: &str = "rbac-expose";
    pub const WEBHOOK: &str = "webhook";
    pub const WEBHOOK_READY: &str = "webhook-ready";
    pub const WEBHOOK_CA: &str = "webhook-ca";
    pub const WEBHOOK_NAMESPACE: &str = "webhook-namespace";
    pub const TARGET: &str = "target";
    pub const INJECTION: &str = "injection";
    pub const SIDECAR: &str = "sidecar";
    pub const SIDECAR_VERSION: &str = "sidecar-version";
    pub const PORT_FORWARD: &str = "port-forward";
    pub const EXEC: &str = "exec";
    pub const PROBE: &str = "probe";
    pub const LOCAL_TARGET: &str = "local-target";
}
use names::*;

/// The checks of a pod, skipped together when there is no pod to check.
const POD_CHECKS: [&str; 6] = [
    INJECTION,
    SIDECAR,
    SIDECAR_VERSION,
    PORT_FORWARD,
    EXEC,
    PROBE,
];

/// The longest one step of talking to the API server may take before it
/// counts as unanswered (a healthy cluster answers in milliseconds).
const STEP: Duration = Duration::from_secs(5);

/// The cluster being examined.
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The namespace of TARGET (and the RBAC checks).
    pub namespace: String,
}

/// `future`, or why it did not finish within [`STEP`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, future)
        .await
        .map_err(|_| format!("no answer within {} s while reading {what}", STEP.as_secs()))
}

/// Runs every check, printing each as it is done; fails when one failed.
pub async fn run(args: DoctorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (target, specs) = split(&args.args)?;
    let started = Instant::now();
    let mut report = Report::new(args.output, std::io::stdout());
    tokio::select! {
        _ = shutdown.cancelled() => bail!("interrupted"),
        () = examine(&args, target.as_ref(), &specs, &mut report) => {}
    }
    match report.finish(started.elapsed()) {
        Ok(()) => Ok(()),
        Err(failed) => bail!("failed: {}; each says what to do next", failed.join(", ")),
    }
}

/// TARGET (the first word, unless it reads as a SPEC) and the SPECs.
fn split(words: &[String]) -> anyhow::Result<(Option<Target>, Vec<PortSpec>)> {
    let (target, specs) = match words.first() {
        Some(first) if PortSpec::parse(first).is_err() => {
            (Some(Target::parse(first)?), &words[1..])
        }
        _ => (None, words),
    };
    Ok((target, PortSpec::parse_all(specs)?))
}

async fn examine<W: std::io::Write>(
    args: &DoctorArgs,
    target: Option<&Target>,
    specs: &[PortSpec],
    report: &mut Report<W>,
) {
    let (api, cluster) = access::reachable(&args.cluster.options()).await;
    report.add(api);
    match cluster {
        Some(cluster) => examine_cluster(&cluster, target, args.transport, report).await,
        None => {
            for name in [
                RBAC,
                RBAC_EXPOSE,
                WEBHOOK,
                WEBHOOK_READY,
                WEBHOOK_CA,
                WEBHOOK_NAMESPACE,
                TARGET,
            ] {
                report.add(Check::skip(name, "needs the API server"));
            }
            skip_from(report, INJECTION, "needs the API server");
        }
    }
    for check in local::check(specs).await {
        report.add(check);
    }
}

/// Skips the pod checks from `first` on.
fn skip_from<W: std::io::Write>(report: &mut Report<W>, first: &str, why: &str) {
    let start = POD_CHECKS.iter().position(|n| *n == first).unwrap_or(0);
    for name in &POD_CHECKS[start..] {
        report.add(Check::skip(name, why));
    }
}

async fn examine_cluster<W: std::io::Write>(
    cluster: &Cluster,
    target: Option<&Target>,
    transport: Transport,
    report: &mut Report<W>,
) {
    let (rbac, found) = tokio::join!(access::rbac(cluster, target, transport), async {
        match target {
            Some(t) => Some(pod::find(cluster, t).await),
            None => None,
        }
    });
    let (target_check, chosen) = match found {
        Some(found) => {
            let (check, pod) = pod::target(found);
            (Some(check), pod)
        }
        None => (None, None),
    };
    let injected = chosen.as_ref().map(preflight::has_sidecar);
    let stakes = webhook::Stakes {
        // A webhook problem stands in the way unless the pod has its sidecar.
        needed: injected != Some(true),
        missing_is_failure: injected == Some(false),
    };
    let (webhook_checks, facts) = webhook::check(cluster, chosen.as_ref(), stakes).await;
    for check in rbac.into_iter().chain(webhook_checks) {
        report.add(check);
    }
    let Some(target_check) = target_check else {
        report.add(Check::skip(
            TARGET,
            "no TARGET given: `rpf doctor TARGET` also checks a pod",
        ));
        skip_from(report, INJECTION, "no TARGET given");
        return;
    };
    report.add(target_check);
    let Some(pod) = chosen else {
        skip_from(report, INJECTION, "the target has no pod to check");
        return;
    };
    report.add(pod::injection(&pod, &cluster.namespace, &facts));
    if injected != Some(true) {
        skip_from(report, SIDECAR, "the pod has no sidecar");
        return;
    }
    report.add(pod::sidecar(&pod));
    if let Some(why) = pod::not_ready(&pod) {
        skip_from(report, SIDECAR_VERSION, &why);
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (forwarded, executed) = tokio::join!(
        transport::greet(cluster, &name, Transport::Portforward),
        transport::greet(cluster, &name, Transport::Exec)
    );
    let (chosen_greeting, other) = match transport {
        Transport::Portforward => (&forwarded, &executed),
        Transport::Exec => (&executed, &forwarded),
    };
    report.add(transport::version(chosen_greeting, other));
    for (way, greeting) in [
        (Transport::Portforward, &forwarded),
        (Transport::Exec, &executed),
    ] {
        let required = way == transport;
        report.add(transport::reached(
            &pod,
            &cluster.namespace,
            way,
            greeting,
            required,
        ));
    }
    let probe = match chosen_greeting {
        transport::Greeting::Greeted(_) => probe::probe(cluster, &pod, transport).await,
        _ => Check::skip(
            PROBE,
            "the sidecar could not be greeted over the chosen transport",
        ),
    };
    report.add(probe);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_word_is_a_target_unless_it_is_a_spec() {
        let (target, specs) = split(&words(&["deploy/web", "8080:3000"])).unwrap();
        assert_eq!(target.unwrap().to_string(), "deployment/web");
        assert_eq!(specs.len(), 1);
        let (target, specs) = split(&words(&["8080:3000", "9090"])).unwrap();
        assert!(target.is_none());
        assert_eq!(specs.len(), 2);
        let (target, specs) = split(&words(&[])).unwrap();
        assert!(target.is_none() && specs.is_empty());
        assert!(split(&words(&["web", "8080:x"])).is_err());
        assert!(split(&words(&["cm/x"])).is_err());
    }

    #[test]
    fn pod_checks_are_skipped_from_where_it_stops() {
        let mut out = Vec::new();
        let mut report = Report::new(report::Format::Json, &mut out);
        skip_from(&mut report, SIDECAR_VERSION, "why");
        let names: Vec<&str> = report.checks().iter().map(|c| c.name).collect();
        assert_eq!(names, [SIDECAR_VERSION, PORT_FORWARD, EXEC, PROBE]);
    }
}
