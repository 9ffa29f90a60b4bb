//! The exit statuses scripts can rely on, one place that picks them.
//!
//! Failures keep their typed source inside the `anyhow` chain, so the
//! status is read from the chain instead of being threaded through every
//! return: a port spec or TARGET that does not parse is bad input wherever
//! it is found; a session error that a new channel could fix, reaching the
//! exit, means the channel was lost and rpf was told not to reconnect.

use std::process::ExitCode;

use rpf_tunnel::error::SessionError;

use crate::cluster::target::InvalidTarget;
use crate::expose::ExposeError;
use crate::spec::SpecError;

/// Success: Ctrl-C after a session, or the command did what it was asked.
pub const OK: u8 = 0;
/// Anything else: the cluster or the sidecar refused, a port could not be
/// bound, a doctor check failed.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap's own usage errors exit 2 as well).
pub const BAD_INPUT: u8 = 2;
/// The channel to the sidecar was lost or went silent and rpf did not
/// reconnect (`--no-reconnect`, or before the first session was up).
pub const LOST: u8 = 3;

/// Wrong input that no parser type names (a missing port spec).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The status for a command's failure.
pub fn status(e: &anyhow::Error) -> u8 {
    let bad_input = |c: &(dyn std::error::Error + 'static)| {
        c.is::<SpecError>()
            || c.is::<InvalidTarget>()
            || c.is::<BadInput>()
            || c.downcast_ref::<ExposeError>()
                .is_some_and(ExposeError::is_bad_input)
    };
    if e.chain().any(bad_input) {
        BAD_INPUT
    } else if e
        .chain()
        .filter_map(|c| c.downcast_ref::<SessionError>())
        .any(SessionError::is_retryable)
    {
        LOST
    } else {
        FAILED
    }
}

/// The process exit code for a command's result.
pub fn code(result: &anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(e) => ExitCode::from(status(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::target::Target;
    use crate::spec::PortSpec;

    #[test]
    fn parse_errors_are_bad_input_even_with_context() {
        let spec = anyhow::Error::new(PortSpec::parse("80:x:y:z").unwrap_err());
        assert_eq!(status(&spec.context("in rpf attach")), BAD_INPUT);
        let target = anyhow::Error::new(Target::parse("nope/web").unwrap_err());
        assert_eq!(status(&target), BAD_INPUT);
        assert_eq!(status(&BadInput("no spec".into()).into()), BAD_INPUT);
    }

    #[test]
    fn a_lost_channel_is_told_apart_from_a_refusal() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let lost = anyhow::Error::new(SessionError::lost(pipe)).context("lost connection");
        assert_eq!(status(&lost), LOST);
        let refused = anyhow::Error::new(SessionError::Remote {
            peer: rpf_proto::Side::Sidecar,
            message: "no".into(),
        });
        assert_eq!(status(&refused), FAILED);
        assert_eq!(status(&anyhow::anyhow!("forbidden")), FAILED);
    }
}
