//! Ctrl-C and SIGTERM, the same way in every binary: the first one cancels
//! the process's [`CancellationToken`] so that it can say goodbye and drain;
//! the second exits at once, for when the goodbye hangs.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: 128 + SIGINT, what shells expect of a
/// command stopped by Ctrl-C.
const FORCED_EXIT: i32 = 130;

/// Cancels `shutdown` on the first SIGINT or SIGTERM and exits the process
/// on the second. Spawn it once at startup. If the handlers cannot be
/// installed, signals keep their default (immediate exit) and this returns.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::debug!("cannot install signal handlers; signals stop the process at once");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    std::process::exit(FORCED_EXIT);
}
