//! `rpf completion SHELL`: shell completion scripts, and the hidden
//! `rpf __complete-targets` that lists TARGETs from the cluster for them.
//!
//! The scripts are clap_complete's (subcommands, flags, values). For bash
//! and fish a small addition completes `rpf attach`'s first positional
//! argument the way kubectl completes resource names: the script runs
//! `rpf __complete-targets [-n NS] [--context C] [--kubeconfig F] -- WORD`,
//! which prints one candidate per line (`NAME` of pods, and
//! `pod/NAME`, `deploy/NAME`, `sts/NAME`, `rs/NAME`, `job/NAME`, `svc/NAME`
//! once the word has a kind prefix) and prints nothing on any error, so a
//! cluster that is slow or unreachable never breaks the shell (the listing is
//! bounded by a short timeout). zsh and PowerShell get clap's static script.

use std::io::Write;
use std::time::Duration;

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, Client, Resource};

use crate::args::Cli;

/// `rpf completion`.
#[derive(Debug, Args)]
#[command(after_help = "Load in the current shell:\n  \
bash: source <(rpf completion bash)\n  \
zsh:  source <(rpf completion zsh)\n  \
fish: rpf completion fish | source\n  \
powershell: rpf completion powershell | Out-String | Invoke-Expression")]
pub struct CompletionArgs {
    /// The shell to print a completion script for.
    pub shell: Shell,
}

/// `rpf __complete-targets` (hidden; called by the completion scripts).
#[derive(Debug, Args)]
pub struct CompleteTargetsArgs {
    /// Namespace, context and kubeconfig.
    #[command(flatten)]
    pub cluster: crate::args::ClusterFlags,
    /// The word being completed.
    #[arg(default_value = "")]
    pub word: String,
}

/// Bash: wraps clap's `_rpf` so that the word after `attach` (the TARGET)
/// is completed from the cluster; everything else is clap's.
const BASH_TARGETS: &str = r#"
_rpf_targets() {
    local i cmd="" positional=0 prev_opt="" extra=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        local w="${COMP_WORDS[i]}"
        if [[ -n "$prev_opt" ]]; then extra+=("$prev_opt" "$w"); prev_opt=""; continue; fi
        case "$w" in
            -n|--namespace|--context|--kubeconfig) prev_opt="$w" ;;
            --namespace=*|--context=*|--kubeconfig=*) extra+=("$w") ;;
            --via|--via=*) return 1 ;;
            -*) ;;
            *) if [[ -z "$cmd" ]]; then cmd="$w"; else positional=$((positional + 1)); fi ;;
        esac
    done
    [[ "$cmd" == attach && $positional -eq 0 && "${COMP_WORDS[COMP_CWORD]}" != -* ]] || return 1
    local IFS=$'\n'
    COMPREPLY=($("${COMP_WORDS[0]}" __complete-targets "${extra[@]}" -- "${COMP_WORDS[COMP_CWORD]}" 2>/dev/null))
    [[ "${COMPREPLY[0]}" == */ ]] && compopt -o nospace 2>/dev/null
    return 0
}
_rpf_with_targets() {
    _rpf_targets || _rpf "$@"
}
complete -F _rpf_with_targets -o bashdefault -o default rpf
complete -F _rpf_with_targets -o bashdefault -o default kubectl-rpf
"#;

/// Fish: TARGET candidates for `rpf attach` from the cluster.
const FISH_TARGETS: &str = r#"
complete -c rpf -n '__fish_seen_subcommand_from attach' -f -a '(rpf __complete-targets -- (commandline -ct) 2>/dev/null)'
"#;

/// Prints the completion script for `args.shell` to stdout.
pub fn run(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "rpf", &mut out);
    match args.shell {
        Shell::Bash => out.extend_from_slice(BASH_TARGETS.as_bytes()),
        Shell::Fish => out.extend_from_slice(FISH_TARGETS.as_bytes()),
        _ => {}
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The kinds a TARGET may name, with the prefix `rpf attach` accepts.
const KINDS: [&str; 6] = ["pod/", "deploy/", "sts/", "rs/", "job/", "svc/"];

/// Prints the TARGETs that start with `args.word`, one a line; prints
/// nothing when the cluster cannot be reached (completion must stay quiet).
pub async fn run_targets(args: &CompleteTargetsArgs) -> anyhow::Result<()> {
    let listing = tokio::time::timeout(Duration::from_secs(3), candidates(args));
    if let Ok(Ok(lines)) = listing.await {
        let mut stdout = std::io::stdout().lock();
        for line in lines.iter().filter(|l| l.starts_with(&args.word)) {
            writeln!(stdout, "{line}")?;
        }
    }
    Ok(())
}

/// Every candidate for `word`: bare pod names and the kind prefixes, or the
/// `KIND/NAME`s of the kind the word names.
async fn candidates(args: &CompleteTargetsArgs) -> anyhow::Result<Vec<String>> {
    let (client, namespace) = args.cluster.options().connect().await?;
    let Some((kind, _)) = args.word.split_once('/') else {
        let mut out = names::<Pod>(&client, &namespace).await?;
        out.extend(KINDS.iter().map(|k| (*k).to_owned()));
        return Ok(out);
    };
    let names = match kind {
        "pod" | "pods" | "po" => names::<Pod>(&client, &namespace).await?,
        "deploy" | "deployment" | "deployments" => names::<Deployment>(&client, &namespace).await?,
        "sts" | "statefulset" | "statefulsets" => names::<StatefulSet>(&client, &namespace).await?,
        "rs" | "replicaset" | "replicasets" => names::<ReplicaSet>(&client, &namespace).await?,
        "job" | "jobs" => names::<Job>(&client, &namespace).await?,
        "svc" | "service" | "services" => names::<Service>(&client, &namespace).await?,
        _ => Vec::new(),
    };
    Ok(names.into_iter().map(|n| format!("{kind}/{n}")).collect())
}

/// The names of the objects of kind `K` in `namespace` (at most 500).
async fn names<K>(client: &Client, namespace: &str) -> anyhow::Result<Vec<String>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list_metadata(&kube::api::ListParams::default().limit(500))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect())
}
