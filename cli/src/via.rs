//! `--via COMMAND`: a channel made of a command's stdin and stdout.
//!
//! Anything that ends in `rpf-sidecar stdio` works: `ip netns exec`,
//! `docker exec -i`, `ssh`. No cluster needed, which is also how the data
//! plane is tested.

use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::oneshot;
use tracing::warn;

use crate::channel::{Channel, OpenError, Place};

/// Opens channels by running a shell command.
#[derive(Debug, Clone)]
pub struct ViaSource {
    command: String,
}

impl ViaSource {
    /// A source running `command` with `sh -c`.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
        }
    }

    /// For messages: the command in quotes.
    pub fn describe(&self) -> String {
        format!("--via '{}'", self.command)
    }

    /// Starts the command; its stdout/stdin are the channel. Its stderr
    /// stays the user's, so the sidecar's own complaints are visible.
    pub async fn open(&mut self) -> Result<Channel, OpenError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C in the terminal reaches only
            // rpf, which says goodbye and closes the pipe; the sidecar then
            // ends by itself instead of dying mid-goodbye.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                OpenError::fatal(anyhow::anyhow!("cannot run {}: {e}", self.describe()))
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        rpf_tunnel::net::grow_pipe(&stdin);
        rpf_tunnel::net::grow_pipe(&stdout);
        let (stop, stopped) = oneshot::channel::<()>();
        let described = self.describe();
        // Owns the child: reports an unexpected exit, kills it when the
        // channel is dropped.
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    if let Ok(status) = status {
                        if !status.success() {
                            warn!("{described} exited ({status})");
                        }
                    }
                }
                _ = stopped => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        });
        Ok(Channel {
            io: Box::new(tokio::io::join(stdout, stdin)),
            place: Place::Via,
            guard: Some(Box::new(stop)),
        })
    }
}
