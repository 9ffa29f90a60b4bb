//! `local-target`: for each SPEC, whether something on this machine takes
//! connections where rpf will dial them (HOST:LOCAL), the same way rpf
//! dials (`localhost` is 127.0.0.1, then ::1).

use std::time::Duration;

use futures::future::join_all;
use rpf_tunnel::net::{describe_io_error, dial};

use super::names::LOCAL_TARGET;
use super::report::Check;
use crate::spec::{PortSpec, Protocol};

/// How long a local dial may take: a local service answers at once.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// One check per SPEC, dialed all at once.
pub async fn check(specs: &[PortSpec]) -> Vec<Check> {
    join_all(specs.iter().map(one)).await
}

async fn one(spec: &PortSpec) -> Check {
    let local = spec.local_display();
    let check = match spec.protocol {
        Protocol::Udp => Check::skip(
            LOCAL_TARGET,
            format!("UDP has no connection to try: rpf sends datagrams to {local} as they come"),
        ),
        Protocol::Tcp => {
            match tokio::time::timeout(DIAL_TIMEOUT, dial(&spec.local_host, spec.local_port)).await {
                Ok(Ok(tcp)) => {
                    let peer = tcp
                        .peer_addr()
                        .map(|a| format!(" ({a})"))
                        .unwrap_or_default();
                    Check::pass(LOCAL_TARGET, format!("{local}{peer} accepts connections"))
                }
                Ok(Err(e)) => Check::fail(
                    LOCAL_TARGET,
                    format!("nothing accepts connections on {local}: {}", describe_io_error(&e)),
                    "start the service on this machine, or point the SPEC at where it listens (REMOTE:HOST:LOCAL)",
                ),
                Err(_) => Check::fail(
                    LOCAL_TARGET,
                    format!("{local} did not answer within {} s", DIAL_TIMEOUT.as_secs()),
                    "check that HOST is reachable from this machine and the service is up",
                ),
            }
        }
    };
    check.about(spec.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[tokio::test]
    async fn a_listening_port_passes_a_closed_one_fails_udp_is_skipped() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let specs = PortSpec::parse_all(&[
            format!("8080:{open}"),
            format!("8081:127.0.0.1:{closed}"),
            "5353:53/udp".to_owned(),
        ])
        .unwrap();
        let checks = check(&specs).await;
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, [Status::Pass, Status::Fail, Status::Skip]);
        assert_eq!(
            checks[0].spec.as_deref(),
            Some(&*format!("8080:localhost:{open}"))
        );
        assert!(
            checks[0]
                .evidence
                .starts_with(&format!("localhost:{open} (127.0.0.1:{open}) accepts")),
            "{}",
            checks[0].evidence
        );
        assert_eq!(
            checks[1].evidence,
            format!("nothing accepts connections on 127.0.0.1:{closed}: connection refused")
        );
        assert!(checks.iter().all(|c| c.name == LOCAL_TARGET));
    }
}
