//! Warnings a peer can trigger at will, rate-limited with a count.
//!
//! A hostile pod can make the CLI refuse 100,000 connections a second; one
//! warning line each would be an amplification attack on the user's
//! terminal and disk. [`warn_limited!`](crate::warn_limited) logs the first
//! few of each call site per window as usual, counts the rest, and when the
//! window ends says `… and 99,997 more like "…" in the last 10 s`.
//! Text the peer controls is escaped and cut before it is logged
//! ([`rpf_proto::untrusted::escape`], [`bounded_debug`]).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one counting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines of one call site logged per window before counting starts.
pub const BURST: u32 = 3;

/// Characters of a remembered line quoted in the summary.
const QUOTE: usize = 80;

/// The state of one call site: see the module docs.
#[derive(Debug)]
pub struct Throttle {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
    first: String,
    summary_scheduled: bool,
}

impl Throttle {
    /// A throttle with no history; `const`, for a `static` per call site.
    pub const fn new() -> Self {
        Throttle {
            inner: Mutex::new(Window {
                started: None,
                logged: 0,
                suppressed: 0,
                first: String::new(),
                summary_scheduled: false,
            }),
        }
    }

    /// Whether this occurrence may be logged; counts it if not.
    pub fn admit(&'static self) -> bool {
        let now = Instant::now();
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            // A summary not yet said (no runtime to schedule it) is said now.
            if w.suppressed > 0 && !w.summary_scheduled {
                tracing::warn!("{}", summary(w.suppressed, &w.first));
            }
            *w = Window {
                started: Some(now),
                logged: 0,
                suppressed: 0,
                first: String::new(),
                summary_scheduled: false,
            };
        }
        if w.logged < BURST {
            w.logged += 1;
            return true;
        }
        w.suppressed += 1;
        if !w.summary_scheduled {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                w.summary_scheduled = true;
                let started = w.started.unwrap_or(now);
                rt.spawn(async move {
                    tokio::time::sleep_until((started + WINDOW).into()).await;
                    self.close_window(started);
                });
            }
        }
        false
    }

    /// Remembers the first logged line of the window, for the summary.
    pub fn remember(&self, line: &str) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.first.is_empty() {
            w.first = line.chars().take(QUOTE).collect();
        }
    }

    /// Says how many were left out of the window that began at `started`,
    /// and starts a fresh one.
    fn close_window(&self, started: Instant) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.started != Some(started) {
            return;
        }
        if w.suppressed > 0 {
            tracing::warn!("{}", summary(w.suppressed, &w.first));
        }
        w.started = None;
        w.suppressed = 0;
        w.summary_scheduled = false;
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// `… and 99,999 more like "refused connection from …" in the last 10 s`.
pub fn summary(suppressed: u64, first: &str) -> String {
    let ellipsis = if first.chars().count() >= QUOTE {
        "…"
    } else {
        ""
    };
    format!(
        "… and {} more like \"{first}{ellipsis}\" in the last {} s",
        thousands(suppressed),
        WINDOW.as_secs()
    )
}

/// `99999` as `99,999`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// `{:?}` of a peer-controlled value, cut to `max` characters with the
/// rest counted: a header map the peer sent can be megabytes once decoded.
pub fn bounded_debug(value: &impl std::fmt::Debug, max: usize) -> String {
    let mut s = String::new();
    let _ = write!(s, "{value:?}");
    rpf_proto::untrusted::escape_cut(&s, max)
}

/// `tracing::warn!`, rate-limited per call site: see the module docs.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::ratelimit::Throttle = $crate::ratelimit::Throttle::new();
        if THROTTLE.admit() {
            let line = ::std::format!($($arg)+);
            THROTTLE.remember(&line);
            ::tracing::warn!("{line}");
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(99_999), "99,999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn the_first_few_pass_then_the_rest_are_counted() {
        static T: Throttle = Throttle::new();
        let admitted = (0..100_000).filter(|_| T.admit()).count();
        assert_eq!(admitted, BURST as usize);
        T.remember("refused connection from 10.0.0.1:4000");
        let w = T.inner.lock().unwrap();
        assert_eq!(w.suppressed, 100_000 - u64::from(BURST));
        assert_eq!(
            summary(w.suppressed, &w.first),
            "… and 99,997 more like \"refused connection from 10.0.0.1:4000\" in the last 10 s"
        );
    }

    #[test]
    fn a_closed_window_admits_again() {
        static T: Throttle = Throttle::new();
        while T.admit() {}
        let started = T.inner.lock().unwrap().started.unwrap();
        T.close_window(started);
        assert!(T.admit(), "a new window starts after the summary");
    }

    #[test]
    fn peer_debug_output_is_cut() {
        let long = vec!["x".repeat(1000); 1000];
        let s = bounded_debug(&long, 200);
        assert!(s.chars().count() < 260, "{s}");
        assert!(s.ends_with("more characters)"), "{s}");
    }
}
