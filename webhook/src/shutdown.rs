//! One shutdown signal for the server and its background tasks.
//!
//! A `watch` channel rather than a broadcast: receivers are cheap to clone,
//! and one created after the signal still sees it. Dropping the
//! [`Trigger`] counts as triggering, so a task never outlives its owner.

use tokio::sync::watch;

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Receives the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger/receiver pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Signals every [`Shutdown`].
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    /// A new receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once the trigger fired (or was dropped).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Whether the trigger already fired.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
