//! Logging set up once per process, in one of two styles.
//!
//! [`LogStyle::Human`] is for a person at a terminal (the CLI): lines read
//! like kubectl's (`Forwarding from 127.0.0.1:8080 -> 8080`), with no
//! timestamp and no level word; warnings and errors keep a short prefix
//! (`warning: `, `error: `) so that they stand out, the same prefix the CLI
//! prints a fatal error with. `-v` switches to the machine layout (and adds
//! debug lines): when debugging, the time of each line matters.
//!
//! [`LogStyle::Machine`] is for `kubectl logs` (the sidecar, the webhook):
//! an RFC 3339 timestamp and the level on every line. JSON output was
//! considered for the webhook and left out: its lines are few (startup,
//! certificate rotation, one per injection) and `kubectl logs` is how
//! people read them; a log pipeline that needs JSON can parse this layout.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Who reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// A person at a terminal: bare messages, `warning: `/`error: ` prefixes.
    Human,
    /// A log collector or `kubectl logs`: timestamp and level on each line.
    Machine,
}

/// The filter directive that keeps h2's own diagnostics, which a peer
/// triggers at will (`recv PING ack that we never sent`), out of the log
/// unless the user asks for trace output (`-vv`).
pub const PEER_NOISE_FILTER: &str = "h2=error";

/// Installs the global subscriber, writing to stderr. `quiet` keeps only
/// warnings and errors; each `verbose` step adds a level (debug, trace) and,
/// for [`LogStyle::Human`], switches to the machine layout. With the
/// `env-filter` feature, a set `RUST_LOG` overrides the level. h2's
/// diagnostics are cut to errors below `-vv` ([`PEER_NOISE_FILTER`]).
pub fn init_logging(style: LogStyle, verbose: u8, quiet: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match (quiet, verbose) {
        (true, _) => Level::WARN,
        (false, 0) => Level::INFO,
        (false, 1) => Level::DEBUG,
        _ => Level::TRACE,
    };
    let directives = if verbose >= 2 {
        level.to_string()
    } else {
        format!("{level},{PEER_NOISE_FILTER}")
    };
    #[cfg(feature = "env-filter")]
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&directives));
    #[cfg(not(feature = "env-filter"))]
    let filter: tracing_subscriber::filter::Targets = directives
        .parse()
        .expect("built-in filter directives parse");
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_max_level(Level::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if style == LogStyle::Human && verbose == 0 {
        builder.event_format(Human).finish().with(filter).init();
    } else {
        builder.finish().with(filter).init();
    }
}

/// The terminal layout: the message and its fields, after a prefix for
/// warnings and errors.
struct Human;

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let (word, color) = match *event.metadata().level() {
            Level::ERROR => ("error", "31"),
            Level::WARN => ("warning", "33"),
            _ => ("", ""),
        };
        if !word.is_empty() {
            if writer.has_ansi_escapes() {
                write!(writer, "\x1b[1;{color}m{word}:\x1b[0m ")?;
            } else {
                write!(writer, "{word}: ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn human_lines_have_no_timestamp_and_prefix_only_problems() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(Human)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("Forwarding from 127.0.0.1:8080 -> 8080");
            tracing::warn!(port = 8080, "cannot dial");
            tracing::error!("lost connection to host");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "Forwarding from 127.0.0.1:8080 -> 8080\n\
             warning: cannot dial port=8080\n\
             error: lost connection to host\n"
        );
    }
}
