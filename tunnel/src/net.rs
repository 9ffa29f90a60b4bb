//! Small networking helpers both ends need: dialing a local target,
//! wording socket errors for people, normalising peer addresses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// How long one dial attempt may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// An OS error as a short lowercase phrase ("connection refused"), the way
/// `kubectl` words them, without the "(os error 111)" noise.
pub fn describe_io_error(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let phrase = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset by peer",
        AddrInUse => "address already in use",
        AddrNotAvailable => "address not available",
        PermissionDenied => "permission denied",
        TimedOut => "timed out",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        _ => return e.to_string(),
    };
    phrase.to_string()
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as plain IPv4, so allow
/// lists written in IPv4 match peers of dual-stack sockets.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The concurrent-connection (or UDP flow) limit of one listener: a permit
/// per connection, returned when it ends. Both ends count with it.
pub fn connection_limit(max_connections: u32) -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(max_connections as usize)
}

/// Whether an allow list admits `ip` (an empty list admits everyone). One
/// check for both ends: the sidecar enforces it, the CLI re-checks.
pub fn allowed(allow: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// Connects to `host:port`, trying every address the name resolves to.
/// `localhost` is answered without a resolver: IPv4 first, then IPv6, so a
/// local service works whichever loopback it listens on.
pub async fn dial(host: &str, port: u16) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        tokio::net::lookup_host((host, port)).await?.collect()
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(last)
}

/// Grows a pipe's kernel buffer from the default 64 KiB to 1 MiB, so a
/// channel over pipes (`--via`, exec) moves bigger chunks per system call.
/// Not a pipe, or not allowed: nothing happens.
pub fn grow_pipe<F: std::os::fd::AsFd>(fd: &F) {
    let _ = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_kubectl() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io_error(&e), "connection refused");
        let e = io::Error::from_raw_os_error(98);
        assert_eq!(describe_io_error(&e), "address already in use");
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(ip), "10.1.2.3".parse::<IpAddr>().unwrap());
        let ip: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical_ip(ip), ip);
    }

    #[tokio::test]
    async fn localhost_falls_back_to_ipv6() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            return; // no IPv6 loopback on this machine: nothing to prove
        };
        let port = listener.local_addr().unwrap().port();
        let tcp = dial("localhost", port)
            .await
            .expect("dial ::1 after 127.0.0.1 refuses");
        assert!(tcp.peer_addr().unwrap().is_ipv6());
    }

    #[tokio::test]
    async fn refused_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = dial("127.0.0.1", port).await.unwrap_err();
        assert_eq!(describe_io_error(&e), "connection refused");
    }
}
