//! How rpf is packaged and installed, checked with the real tools: the
//! Dockerfile's Rust version, the CLI's shell completion scripts (sourced by
//! bash), the release archive against the krew manifest, and
//! `images/build.sh --push` to a real local registry, pulled back by digest.
//!
//! ```sh
//! apt-get install skopeo docker-registry   # for the push test
//! cargo test -p rpf-e2e --test packaging
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use rpf_e2e::cluster::{find_tool, output, repo_root, run};

/// Builds both binaries of rpf-cli (`rpf`, `kubectl-rpf`) for this test's
/// profile and returns the directory holding them.
fn cli_bin_dir() -> PathBuf {
    // This test runs from <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .args(["build", "-p", "rpf-cli", "--bins"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "cargo build -p rpf-cli failed"
    );
    profile_dir
}

/// A scratch directory for one test, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Dockerfile builds with the Rust the workspace declares
/// (`rust-version`): an older toolchain cannot build the workspace.
#[test]
fn dockerfile_rust_version_matches_the_workspace() {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).unwrap();
    let dockerfile = read("Dockerfile");
    let docker = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("Dockerfile: no `ARG RUST_VERSION=`")
        .trim()
        .to_owned();
    let cargo = read("Cargo.toml");
    let workspace = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml: no rust-version")
        .trim()
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        docker, workspace,
        "Dockerfile RUST_VERSION must equal the workspace's rust-version"
    );
    assert!(
        dockerfile.contains("FROM rust:${RUST_VERSION}-"),
        "the builder stage must use RUST_VERSION"
    );
}

/// `cargo install --path cli` installs every binary target of rpf-cli:
/// both `rpf` and `kubectl-rpf` must be binary targets.
#[test]
fn cli_package_has_both_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = run(Command::new(cargo).current_dir(repo_root()).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]));
    let cli = meta
        .split("\"name\":\"rpf-cli\"")
        .nth(1)
        .expect("rpf-cli in cargo metadata");
    for bin in ["rpf", "kubectl-rpf"] {
        assert!(
            cli.contains(&format!(
                "\"kind\":[\"bin\"],\"crate_types\":[\"bin\"],\"name\":\"{bin}\""
            )),
            "rpf-cli has no binary target {bin}"
        );
    }
}

/// Every completion script is generated; bash sources its script and
/// registers the completion for `rpf` and `kubectl-rpf`, and the TARGET
/// helper the script calls is there (and quiet without a cluster).
#[test]
fn completion_scripts_generate_and_bash_sources_them() {
    let dir = cli_bin_dir();
    let rpf = dir.join("rpf");
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let script = run(Command::new(&rpf).args(["completion", shell]));
        assert!(
            script.contains("attach") && script.contains("namespace"),
            "{shell} script lacks the attach subcommand or its flags:\n{script}"
        );
    }
    let script = format!(
        "set -e; source <('{}' completion bash); complete -p rpf; complete -p kubectl-rpf; \
         declare -F _rpf_targets",
        rpf.display()
    );
    let out = run(Command::new("bash").args(["-c", &script]));
    assert!(
        out.contains("-F _rpf_with_targets rpf\n"),
        "bash did not register the completion:\n{out}"
    );
    assert!(
        out.contains(" kubectl-rpf\n"),
        "no completion for kubectl-rpf:\n{out}"
    );

    // Without a reachable cluster the helper prints nothing and succeeds.
    let empty = scratch("completion-kubeconfig").join("kubeconfig");
    std::fs::write(
        &empty,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n",
    )
    .unwrap();
    let out = output(
        Command::new(&rpf)
            .args(["__complete-targets", "--kubeconfig"])
            .arg(&empty)
            .args(["--", "po"]),
    );
    assert!(out.status.success(), "__complete-targets failed: {out:?}");
    assert!(out.stdout.is_empty(), "__complete-targets printed: {out:?}");

    // A bash session completing `rpf attach de` runs the helper: with a
    // stub `rpf` that prints candidates, COMPREPLY holds them.
    let stub_dir = scratch("completion-stub");
    let stub = stub_dir.join("rpf");
    std::fs::write(
        &stub,
        "#!/bin/sh\n[ \"$1\" = __complete-targets ] && printf 'deploy/api\\ndeploy/web\\n'\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&stub));
    let script = format!(
        "source <('{rpf}' completion bash); COMP_WORDS=('{stub}' attach deploy/); COMP_CWORD=2; \
         COMP_LINE='rpf attach deploy/'; COMP_POINT=${{#COMP_LINE}}; _rpf_with_targets; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        rpf = rpf.display(),
        stub = stub.display()
    );
    let out = run(Command::new("bash").args(["-c", &script]));
    assert_eq!(out, "deploy/api\ndeploy/web\n", "TARGET completion");
}

/// The top-level `files[].from` and `bin` of every platform in a krew
/// manifest (a line parser: our own file).
fn krew_files(manifest: &str) -> (Vec<String>, Vec<String>) {
    let mut from = Vec::new();
    let mut bins = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("- from: ") {
            from.push(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("bin: ") {
            bins.push(v.trim().to_owned());
        }
    }
    (from, bins)
}

/// plugins/package.sh builds the archive plugins/rpf.yaml describes: every
/// file its `files` and `bin` name is in the archive, and the manifest it
/// writes for the archive carries the archive's sha256.
#[test]
fn release_archive_matches_the_krew_manifest() {
    let bins = cli_bin_dir();
    let out = scratch("package");
    run(Command::new("bash")
        .arg(repo_root().join("plugins/package.sh"))
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bins));
    let archive = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("no .tar.gz written");
    let listing = run(Command::new("tar").arg("-tzf").arg(&archive));
    let entries: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .collect();

    let manifest = std::fs::read_to_string(repo_root().join("plugins/rpf.yaml")).unwrap();
    assert!(manifest.contains("apiVersion: krew.googlecontainertools.github.com/v1alpha2"));
    assert!(manifest.contains("kind: Plugin"));
    let (from, bin) = krew_files(&manifest);
    assert!(
        !from.is_empty() && !bin.is_empty(),
        "manifest names no files"
    );
    for pattern in &from {
        let found = match pattern.strip_suffix("/*") {
            Some(dir) => entries.iter().any(|e| e.starts_with(&format!("{dir}/"))),
            None => entries.contains(&pattern.as_str()),
        };
        assert!(
            found,
            "{pattern} (manifest files) is not in the archive: {entries:?}"
        );
    }
    for b in &bin {
        assert!(
            entries.contains(&b.as_str()),
            "bin {b} is not in the archive"
        );
    }
    for f in [
        "completions/rpf.bash",
        "completions/_rpf",
        "completions/rpf.fish",
        "completions/rpf.ps1",
        "LICENSE",
        "rpf",
        "kubectl-rpf",
    ] {
        assert!(
            entries.contains(&f),
            "{f} is not in the archive: {entries:?}"
        );
    }

    let written = std::fs::read_to_string(out.join("rpf.yaml")).unwrap();
    let sha = run(Command::new("sha256sum").arg(&archive));
    let sha = sha.split_whitespace().next().unwrap();
    assert!(
        written.contains(&format!("sha256: \"{sha}\"")),
        "written manifest:\n{written}"
    );
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        written.contains(&format!("/{name}\n")),
        "written manifest uri:\n{written}"
    );
    assert_eq!(krew_files(&written).1, vec!["kubectl-rpf".to_owned()]);
}

/// A `docker-registry` on a free loopback port with its own storage, stopped
/// on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let bin = find_tool(
            "RPF_E2E_DOCKER_REGISTRY",
            "docker-registry",
            "apt-get install docker-registry",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin).arg("serve").arg(&config).spawn().unwrap();
        let registry = Self { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("docker-registry did not listen on {}", registry.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `images/build.sh --push` copies the image archives to a registry, and
/// each image pulls back by the digest it printed, with the same config.
#[test]
fn build_sh_pushes_images_that_pull_back_by_digest() {
    let skopeo = find_tool("RPF_E2E_SKOPEO", "skopeo", "apt-get install skopeo");
    let dir = scratch("push");
    let registry = Registry::start(&dir);
    // Small image archives made by the same tool as build.sh's (building the
    // real binaries is build.sh's own business, covered by the cluster tests).
    let payload = dir.join("payload");
    std::fs::write(&payload, "rpf push test\n").unwrap();
    let (sidecar, webhook) = rpf_e2e::cluster::images_env();
    for (name, reference) in [("rpf-sidecar", &sidecar), ("rpf-webhook", &webhook)] {
        run(Command::new("python3")
            .arg(repo_root().join("images/mkarchive.py"))
            .args(["--name", reference, "--out"])
            .arg(dir.join(format!("{name}.tar")))
            .arg("--file")
            .arg(format!("{}:/{name}", payload.display()))
            .args([
                "--entrypoint",
                &format!("[\"/{name}\"]"),
                "--user",
                "65532:65532",
            ]));
    }
    let prefix = format!("{}/team", registry.addr);
    let out = run(Command::new("bash")
        .arg(repo_root().join("images/build.sh"))
        .args(["--no-build", "--insecure", "--push", &prefix, "--out"])
        .arg(&dir));
    let set_image = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("kustomize edit set image "))
        .unwrap_or_else(|| panic!("no `kustomize edit set image` line:\n{out}"));
    for (name, reference) in [("rpf-sidecar", &sidecar), ("rpf-webhook", &webhook)] {
        let old = reference.rsplit_once(':').unwrap().0;
        let pinned = set_image
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{old}=")))
            .unwrap_or_else(|| panic!("{name} not in: {set_image}"));
        assert!(
            pinned.starts_with(&format!("{prefix}/{name}@sha256:")),
            "{pinned}"
        );
        let digest = pinned.rsplit_once('@').unwrap().1;
        // Pulled back by digest: the registry serves that very manifest.
        let inspect = run(Command::new(&skopeo).args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{pinned}"),
        ]));
        assert_eq!(inspect.trim(), digest, "{name}");
        let copy = dir.join(format!("{name}-pulled"));
        run(Command::new(&skopeo)
            .args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                &format!("docker://{pinned}"),
            ])
            .arg(format!("oci:{}", copy.display())));
        let index = std::fs::read_to_string(copy.join("index.json")).unwrap();
        assert!(
            index.contains(digest),
            "{name}: pulled index lacks {digest}: {index}"
        );
    }
}
