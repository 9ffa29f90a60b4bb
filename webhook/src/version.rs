//! Native sidecar support, from the API server's version.
//!
//! Native sidecars (init containers with `restartPolicy: Always`) are beta
//! and on by default from Kubernetes 1.29. On an older API server the field
//! is dropped as unknown, and the sidecar would become a plain init
//! container that never exits: the pod would hang in `Init`. So `auto`
//! only turns them on when the server says it is 1.29 or newer.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;

/// First Kubernetes minor version with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// `(major, minor)` of a version reply. Managed offerings report minors
/// like `"29+"`, so only the leading digits count; `gitVersion`
/// (`v1.29.3-gke.1`) is the fallback.
pub fn parse(info: &Info) -> Option<(u32, u32)> {
    fn leading(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    if let (Some(ma), Some(mi)) = (leading(&info.major), leading(&info.minor)) {
        return Some((ma, mi));
    }
    let v = info.git_version.strip_prefix('v')?;
    let mut parts = v.split('.');
    Some((leading(parts.next()?)?, leading(parts.next()?)?))
}

/// Whether a server of this version runs native sidecars.
pub fn supports_native_sidecars(version: (u32, u32)) -> bool {
    version >= (1, NATIVE_SIDECAR_MINOR)
}

/// Asks the API server; `None` when it cannot be asked (the caller then
/// falls back to classic sidecars).
pub async fn detect(client: &kube::Client) -> Option<bool> {
    let info = match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await
    {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the API server version; using classic sidecars");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                "the API server did not answer /version in 10 s; using classic sidecars"
            );
            return None;
        }
    };
    let Some(version) = parse(&info) else {
        tracing::warn!(git_version = %info.git_version, "cannot parse the API server version; using classic sidecars");
        return None;
    };
    let native = supports_native_sidecars(version);
    tracing::info!(
        server = %info.git_version,
        native_sidecar = native,
        "sidecar mode chosen from the API server version"
    );
    Some(native)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        }
    }

    #[test]
    fn versions() {
        let table = [
            (info("1", "20", "v1.20.2"), Some((1, 20)), false),
            (info("1", "28", "v1.28.9"), Some((1, 28)), false),
            (info("1", "29", "v1.29.0"), Some((1, 29)), true),
            (info("1", "29+", "v1.29.3-gke.1"), Some((1, 29)), true),
            (info("1", "33", "v1.33.1"), Some((1, 33)), true),
            (info("", "", "v1.30.2-eks-1"), Some((1, 30)), true),
            (info("2", "0", "v2.0.0"), Some((2, 0)), true),
            (info("", "", "garbage"), None, false),
        ];
        for (i, want, native) in table {
            let got = parse(&i);
            assert_eq!(got, want, "{i:?}");
            assert_eq!(got.is_some_and(supports_native_sidecars), native, "{i:?}");
        }
    }
}
