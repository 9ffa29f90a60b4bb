//! What `rpf doctor` found: one [`Check`] per step, its status, the
//! evidence and the next step, printed as soon as it is known (text for
//! people, one JSON object a line for programs), then a summary; and
//! whether the whole run passed.
//!
//! Evidence is mostly the cluster's own words (names, messages, labels),
//! which anyone able to create a pod can shape: every string goes through
//! [`rpf_proto::untrusted::escape_cut`] here, the one place output is made,
//! so no check has to remember it.

use std::io::Write;
use std::time::Duration;

use rpf_proto::untrusted::escape_cut;
use serde_json::json;

/// Longest evidence or next step printed, in characters.
const MAX_TEXT: usize = 1000;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Pass,
    /// Something is off that does not stop what was asked for (the other
    /// transport, `rpf expose` permissions, a webhook the pod no longer needs).
    Warn,
    /// Broken: `rpf attach` would fail, or new pods would not be injected.
    Fail,
    /// Not checked: nothing to check, or an earlier failure made it moot.
    Skip,
}

impl Status {
    /// The JSON spelling.
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }

    /// The text spelling, fixed width.
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable id (`api-server`, `rbac`, ...; see docs/doctor.md).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was seen, in one line.
    pub evidence: String,
    /// What to do about it; empty when nothing.
    pub next: String,
    /// For `local-target`: the SPEC it is about.
    pub spec: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Status, evidence: String, next: String) -> Self {
        Self {
            name,
            status,
            evidence,
            next,
            spec: None,
        }
    }

    /// It works: `evidence` says how we know.
    pub fn pass(name: &'static str, evidence: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, evidence.into(), String::new())
    }

    /// Broken: `evidence` says what was seen, `next` what to do.
    pub fn fail(name: &'static str, evidence: impl Into<String>, next: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, evidence.into(), next.into())
    }

    /// Off, but not in the way of what was asked.
    pub fn warn(name: &'static str, evidence: impl Into<String>, next: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, evidence.into(), next.into())
    }

    /// Not checked, and why.
    pub fn skip(name: &'static str, why: impl Into<String>) -> Self {
        Self::new(name, Status::Skip, why.into(), String::new())
    }

    /// A failure that is only a warning when `required` is false.
    pub fn fail_if(
        required: bool,
        name: &'static str,
        evidence: impl Into<String>,
        next: impl Into<String>,
    ) -> Self {
        match required {
            true => Self::fail(name, evidence, next),
            false => Self::warn(name, evidence, next),
        }
    }

    /// The same finding about one SPEC.
    pub fn about(mut self, spec: String) -> Self {
        self.spec = Some(spec);
        self
    }
}

pub use crate::args::Format;

/// Prints findings as they come and keeps them for the summary.
pub struct Report<W: Write> {
    format: Format,
    out: W,
    checks: Vec<Check>,
}

/// Width of the check name column in text output (the longest name).
const NAME_WIDTH: usize = 17;

impl<W: Write> Report<W> {
    /// An empty report printing to `out`.
    pub fn new(format: Format, out: W) -> Self {
        Self {
            format,
            out,
            checks: Vec::new(),
        }
    }

    /// Prints `check` now and keeps it.
    pub fn add(&mut self, check: Check) {
        let line = match self.format {
            Format::Text => text_line(&check),
            Format::Json => json_line(&check),
        };
        // A closed stdout (`rpf doctor | head -1`) is not worth a panic.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.checks.push(check);
    }

    /// Every finding so far.
    #[cfg(test)]
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Prints the summary; `Ok` when no check failed, else the names of
    /// the failed ones (each once).
    pub fn finish(mut self, elapsed: Duration) -> Result<(), Vec<&'static str>> {
        let mut failed: Vec<&'static str> = Vec::new();
        for check in self.checks.iter().filter(|c| c.status == Status::Fail) {
            if !failed.contains(&check.name) {
                failed.push(check.name);
            }
        }
        let line = match self.format {
            Format::Text => text_summary(&self.checks, elapsed),
            Format::Json => json_summary(&self.checks, elapsed),
        };
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed),
        }
    }
}

fn safe(text: &str) -> String {
    escape_cut(text, MAX_TEXT)
}

/// `PASS  api-server         Kubernetes v1.20.2 at ...`, and for anything
/// to do an indented `next:` line.
fn text_line(check: &Check) -> String {
    let evidence = match &check.spec {
        Some(spec) => format!("{}: {}", safe(spec), safe(&check.evidence)),
        None => safe(&check.evidence),
    };
    let mut line = format!(
        "{}  {:<NAME_WIDTH$}  {evidence}",
        check.status.label(),
        check.name
    );
    if !check.next.is_empty() {
        line.push_str(&format!(
            "\n{:width$}next: {}",
            "",
            safe(&check.next),
            width = 6 + NAME_WIDTH
        ));
    }
    line
}

/// `{"check":"rbac","status":"fail","evidence":"...","next":"..."}`, plus
/// `"spec"` for a local target.
fn json_line(check: &Check) -> String {
    let mut object = json!({
        "check": check.name,
        "status": check.status.as_str(),
        "evidence": safe(&check.evidence),
        "next": safe(&check.next),
    });
    if let Some(spec) = &check.spec {
        object["spec"] = json!(safe(spec));
    }
    object.to_string()
}

/// How many checks had each status.
fn counts(checks: &[Check]) -> [usize; 4] {
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    [
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip),
    ]
}

/// `3 passed, 1 warning, 1 failed, 2 skipped`.
fn tally(checks: &[Check]) -> String {
    let [pass, warn, fail, skip] = counts(checks);
    let mut parts = vec![format!("{pass} passed")];
    if warn > 0 {
        parts.push(format!(
            "{warn} warning{}",
            if warn == 1 { "" } else { "s" }
        ));
    }
    if fail > 0 {
        parts.push(format!("{fail} failed"));
    }
    if skip > 0 {
        parts.push(format!("{skip} skipped"));
    }
    parts.join(", ")
}

/// The first failure's next step: what to fix first.
fn first_fix(checks: &[Check]) -> Option<&Check> {
    checks.iter().find(|c| c.status == Status::Fail)
}

fn text_summary(checks: &[Check], elapsed: Duration) -> String {
    let verdict = match first_fix(checks) {
        None => "everything needed works".to_owned(),
        Some(c) => format!("fix {} first", c.name),
    };
    format!(
        "\n{} in {:.1} s: {verdict}",
        tally(checks),
        elapsed.as_secs_f64()
    )
}

fn json_summary(checks: &[Check], elapsed: Duration) -> String {
    let [pass, warn, fail, skip] = counts(checks);
    let first = first_fix(checks);
    json!({
        "check": "summary",
        "status": if first.is_some() { "fail" } else { "pass" },
        "evidence": tally(checks),
        "next": first.map(|c| safe(&c.next)).unwrap_or_default(),
        "passed": pass,
        "warned": warn,
        "failed": fail,
        "skipped": skip,
        "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> Vec<Check> {
        vec![
            Check::pass("api-server", "Kubernetes v1.30.0 at https://k:6443"),
            Check::fail(
                "rbac",
                "missing in namespace \"dev\": create pods/portforward",
                "ask a cluster admin for a Role granting it",
            ),
            Check::warn("exec", "forbidden", "only needed with --transport exec"),
            Check::skip("probe", "needs the port-forward"),
            Check::fail("local-target", "connection refused", "start it").about("8080:3000".into()),
        ]
    }

    fn render(format: Format, checks: Vec<Check>) -> (String, Result<(), Vec<&'static str>>) {
        let mut out = Vec::new();
        let mut report = Report::new(format, &mut out);
        for c in checks {
            report.add(c);
        }
        let result = report.finish(Duration::from_millis(1234));
        (String::from_utf8(out).unwrap(), result)
    }

    #[test]
    fn only_failures_fail_the_run() {
        let (_, result) = render(Format::Text, sample());
        assert_eq!(result, Err(vec!["rbac", "local-target"]));
        let fine: Vec<Check> = sample()
            .into_iter()
            .filter(|c| c.status != Status::Fail)
            .collect();
        assert_eq!(render(Format::Text, fine).1, Ok(()));
        assert_eq!(render(Format::Text, vec![]).1, Ok(()));
        assert!(Check::fail_if(true, "x", "", "").status == Status::Fail);
        assert!(Check::fail_if(false, "x", "", "").status == Status::Warn);
    }

    #[test]
    fn text_lines_are_aligned_with_the_next_step_below() {
        let (text, _) = render(Format::Text, sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "PASS  api-server         Kubernetes v1.30.0 at https://k:6443"
        );
        assert_eq!(
            lines[1],
            "FAIL  rbac               missing in namespace \"dev\": create pods/portforward"
        );
        assert_eq!(
            lines[2],
            "                       next: ask a cluster admin for a Role granting it"
        );
        assert!(lines.contains(&"FAIL  local-target       8080:3000: connection refused"));
        assert_eq!(
            lines.last().unwrap(),
            &"1 passed, 1 warning, 2 failed, 1 skipped in 1.2 s: fix rbac first"
        );
        let (text, _) = render(Format::Text, vec![Check::pass("api-server", "ok")]);
        assert!(text.ends_with("1 passed in 1.2 s: everything needed works\n"));
    }

    #[test]
    fn json_lines_have_stable_fields_and_a_summary() {
        let (text, _) = render(Format::Json, sample());
        let objects: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(objects.len(), 6);
        for o in &objects[..5] {
            for field in ["check", "status", "evidence", "next"] {
                assert!(o[field].is_string(), "{field} in {o}");
            }
        }
        assert_eq!(objects[1]["check"], "rbac");
        assert_eq!(objects[1]["status"], "fail");
        assert_eq!(objects[0]["next"], "");
        assert_eq!(objects[2]["status"], "warn");
        assert_eq!(objects[3]["status"], "skip");
        assert_eq!(objects[4]["spec"], "8080:3000");
        assert!(objects[0].get("spec").is_none());
        let summary = &objects[5];
        assert_eq!(summary["check"], "summary");
        assert_eq!(summary["status"], "fail");
        assert_eq!(
            summary["next"],
            "ask a cluster admin for a Role granting it"
        );
        assert_eq!(
            [
                &summary["passed"],
                &summary["warned"],
                &summary["failed"],
                &summary["skipped"]
            ],
            [1, 1, 2, 1]
        );
        assert_eq!(summary["elapsed_ms"], 1234);
    }

    #[test]
    fn cluster_text_cannot_reach_the_terminal_raw() {
        let forged = Check::fail(
            "injection",
            "pod \u{1b}[2Jevil\nPASS  rbac  fine",
            "run \u{202e}this",
        );
        let (text, _) = render(Format::Text, vec![forged.clone()]);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("PASS")), "{text}");
        assert!(text.contains("pod \\u{1b}[2Jevil\\nPASS"), "{text}");
        let (json, _) = render(Format::Json, vec![forged]);
        let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(first["next"], "run \\u{202e}this");
    }
}
