//! Reverse port specs: `REMOTE:LOCAL`, `REMOTE:HOST:LOCAL` or `REMOTE`,
//! each with an optional `/udp` (or `/tcp`, the default) suffix.
//!
//! The shape is `ssh -R`'s and KEP-5695's, the suffix Docker's: REMOTE is
//! the port bound inside the pod, HOST:LOCAL what the CLI dials on the
//! user's side. The CLI dials only what these specs say; the pod never
//! chooses a destination.

use std::collections::HashSet;
use std::fmt;

pub use rpf_proto::message::Protocol;

/// One parsed port spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port bound inside the pod.
    pub remote_port: u16,
    /// Host dialed on the user's side (`localhost` unless given).
    pub local_host: String,
    /// Port dialed on the user's side.
    pub local_port: u16,
    /// TCP unless the spec ends in `/udp`.
    pub protocol: Protocol,
}

/// Why a spec was rejected; the text is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec has the wrong number of `:` parts, or an empty part.
    #[error("invalid port spec {spec:?}: {why} (expected REMOTE, REMOTE:LOCAL or REMOTE:HOST:LOCAL, optionally with /udp, e.g. 8080:80 or 5353:53/udp)")]
    Shape {
        /// The spec as typed.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A port is not a number in 1..=65535.
    #[error("invalid port spec {spec:?}: {which} port {value:?} is not a number from 1 to 65535")]
    Port {
        /// The spec as typed.
        spec: String,
        /// `remote` or `local`.
        which: &'static str,
        /// The offending text.
        value: String,
    },
    /// The suffix after `/` is not a protocol rpf carries.
    #[error("invalid port spec {spec:?}: unknown protocol {protocol:?} (write /tcp, the default, or /udp)")]
    Protocol {
        /// The spec as typed.
        spec: String,
        /// The offending suffix.
        protocol: String,
    },
    /// Two specs bind the same port and protocol in the pod.
    #[error("remote port {0}{suffix} is given twice: each port in the pod can be forwarded only once per protocol", suffix = udp_suffix(*.1))]
    Duplicate(u16, Protocol),
}

impl PortSpec {
    /// Parses one spec.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let shape = |why| SpecError::Shape {
            spec: spec.to_string(),
            why,
        };
        let (ports, protocol) = match spec.rsplit_once('/') {
            None => (spec, Protocol::Tcp),
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some((_, other)) => {
                return Err(SpecError::Protocol {
                    spec: spec.to_string(),
                    protocol: other.chars().take(32).collect(),
                })
            }
        };
        if ports.is_empty() {
            return Err(shape("it is empty"));
        }
        let (remote, host, local) = match split_spec(ports) {
            Some(parts) => parts,
            None => {
                return Err(shape(
                    "too many ':' (write IPv6 hosts in brackets, e.g. 8080:[::1]:80)",
                ))
            }
        };
        let remote_port = parse_port(spec, "remote", remote)?;
        let local_port = match local {
            None => remote_port,
            Some("") => return Err(shape("the local port is missing after ':'")),
            Some(local) => parse_port(spec, "local", local)?,
        };
        let local_host = match host {
            None => "localhost".to_string(),
            Some("") => return Err(shape("the host between the two ':' is empty")),
            Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        };
        Ok(PortSpec {
            remote_port,
            local_host,
            local_port,
            protocol,
        })
    }

    /// Parses every spec and rejects a remote port given twice for the same
    /// protocol (TCP and UDP on one port are two listeners).
    pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Self>, SpecError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(specs.len());
        for s in specs {
            let spec = Self::parse(s.as_ref())?;
            if !seen.insert((spec.remote_port, spec.protocol)) {
                return Err(SpecError::Duplicate(spec.remote_port, spec.protocol));
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// `host:port` as the CLI dials it (IPv6 literals in brackets).
    pub fn local_display(&self) -> String {
        if self.local_host.contains(':') {
            format!("[{}]:{}", self.local_host, self.local_port)
        } else {
            format!("{}:{}", self.local_host, self.local_port)
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}{}",
            self.remote_port,
            self.local_display(),
            udp_suffix(self.protocol)
        )
    }
}

/// `/udp` for UDP, nothing for TCP (the default), as the user writes specs.
fn udp_suffix(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "",
        Protocol::Udp => "/udp",
    }
}

/// Splits into (remote, host, local), honouring `[v6]` brackets in the host.
fn split_spec(spec: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let Some((remote, rest)) = spec.split_once(':') else {
        return Some((spec, None, None));
    };
    if let Some(stripped) = rest.strip_prefix('[') {
        let (host, after) = stripped.split_once(']')?;
        let local = after.strip_prefix(':')?;
        return Some((remote, Some(host), Some(local)));
    }
    match rest.split_once(':') {
        None => Some((remote, None, Some(rest))),
        Some((host, local)) if !local.contains(':') => Some((remote, Some(host), Some(local))),
        Some(_) => None,
    }
}

fn parse_port(spec: &str, which: &'static str, value: &str) -> Result<u16, SpecError> {
    match value.parse::<u16>() {
        Ok(p) if p != 0 && !value.starts_with('+') => Ok(p),
        _ => Err(SpecError::Port {
            spec: spec.to_string(),
            which,
            value: value.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (u16, String, u16) {
        let p = PortSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(p.protocol, Protocol::Tcp, "{s}");
        (p.remote_port, p.local_host, p.local_port)
    }

    fn udp(s: &str) -> (u16, String, u16) {
        let p = PortSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(p.protocol, Protocol::Udp, "{s}");
        (p.remote_port, p.local_host, p.local_port)
    }

    #[test]
    fn a_udp_suffix_on_each_shape() {
        assert_eq!(udp("5353/udp"), (5353, "localhost".into(), 5353));
        assert_eq!(udp("5353:53/udp"), (5353, "localhost".into(), 53));
        assert_eq!(udp("5353:10.0.0.2:53/udp"), (5353, "10.0.0.2".into(), 53));
        assert_eq!(udp("5353:[::1]:53/udp"), (5353, "::1".into(), 53));
        assert_eq!(ok("8080:80/tcp"), (8080, "localhost".into(), 80));
        assert_eq!(ok("8080/tcp"), (8080, "localhost".into(), 8080));
    }

    #[test]
    fn rejects_bad_protocols_and_empty_ports() {
        let cases = [
            ("53/sctp", "unknown protocol \"sctp\""),
            ("53/UDP", "unknown protocol \"UDP\""),
            ("53/", "unknown protocol \"\""),
            ("53/udp/udp", "remote port \"53/udp\""),
            ("/udp", "empty"),
            ("5353:/udp", "local port is missing"),
            ("0/udp", "remote port \"0\""),
        ];
        for (spec, want) in cases {
            let err = PortSpec::parse(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err} should mention {want}");
        }
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_two_listeners() {
        let specs = PortSpec::parse_all(&["53:5353", "53:5353/udp"]).unwrap();
        assert_eq!(specs.len(), 2);
        let err = PortSpec::parse_all(&["53/udp", "53:54/udp"]).unwrap_err();
        assert_eq!(err, SpecError::Duplicate(53, Protocol::Udp));
        assert!(err.to_string().contains("53/udp is given twice"), "{err}");
        let err = PortSpec::parse_all(&["53/tcp", "53"]).unwrap_err();
        assert_eq!(err, SpecError::Duplicate(53, Protocol::Tcp));
        assert!(err.to_string().contains("port 53 is given twice"), "{err}");
    }

    #[test]
    fn accepts_the_three_shapes() {
        assert_eq!(ok("8080"), (8080, "localhost".into(), 8080));
        assert_eq!(ok("8080:80"), (8080, "localhost".into(), 80));
        assert_eq!(ok("8080:db.local:5432"), (8080, "db.local".into(), 5432));
        assert_eq!(ok("8080:127.0.0.1:80"), (8080, "127.0.0.1".into(), 80));
        assert_eq!(ok("8080:[::1]:80"), (8080, "::1".into(), 80));
        assert_eq!(ok("1:65535"), (1, "localhost".into(), 65535));
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        let cases = [
            ("0:80", "remote port \"0\""),
            ("70000:80", "remote port \"70000\""),
            ("a:b", "remote port \"a\""),
            ("80:b", "local port \"b\""),
            ("8080:", "local port is missing"),
            ("8080::80", "host between the two ':' is empty"),
            ("", "empty"),
            ("-1:80", "remote port \"-1\""),
            ("+80:80", "remote port \"+80\""),
            ("8080:::1:80", "too many ':'"),
            ("8080:[::1]80", "too many ':'"),
            ("8080:80:90:100", "too many ':'"),
            ("8080:0", "local port \"0\""),
        ];
        for (spec, want) in cases {
            let err = PortSpec::parse(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err} should mention {want}");
        }
    }

    #[test]
    fn rejects_duplicate_remote_ports() {
        let err = PortSpec::parse_all(&["8080:80", "9090", "8080:81"]).unwrap_err();
        assert_eq!(err, SpecError::Duplicate(8080, Protocol::Tcp));
        assert!(PortSpec::parse_all(&["8080:80", "8081:80"]).is_ok());
    }

    #[test]
    fn displays_like_it_was_typed() {
        assert_eq!(
            PortSpec::parse("8080:[::1]:80").unwrap().to_string(),
            "8080:[::1]:80"
        );
        assert_eq!(
            PortSpec::parse("9000").unwrap().local_display(),
            "localhost:9000"
        );
        assert_eq!(
            PortSpec::parse("5353:53/udp").unwrap().to_string(),
            "5353:localhost:53/udp"
        );
    }
}
