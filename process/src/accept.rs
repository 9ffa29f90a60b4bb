//! Accepting connections without spinning. `accept` fails for reasons that
//! pass (EMFILE when the process is out of descriptors, ECONNABORTED when a
//! client gave up in the backlog); retrying at once would burn a core and
//! flood the log, so failures back off exponentially, capped, and the delay
//! resets after a success.

use std::net::SocketAddr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::net::{TcpListener, TcpStream};

/// The first pause after a failed accept; doubles up to [`MAX_DELAY`].
const MIN_DELAY: Duration = Duration::from_millis(10);
/// The longest pause between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Accepts the next connection on `listener`, retrying with back-off while
/// accepting fails. `what` names the listener in the warning ("the control
/// port"). Never returns an error: callers stop it by dropping the future
/// (`select!` with their shutdown token).
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .without_max_times()
        .build();
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                let delay = delays.next().unwrap_or(MAX_DELAY);
                tracing::warn!("accept on {what} failed: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_connection_and_its_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_, peer) = accept(&listener, "a test listener").await;
        assert_eq!(peer, client.local_addr().unwrap());
    }
}
