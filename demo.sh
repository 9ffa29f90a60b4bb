#!/usr/bin/env bash
# rpf in one command: a process in a "pod" reaches a service on your machine.
#
#   ./demo.sh                  a network namespace stands in for the pod (root)
#   ./demo.sh --keep-running   ... and stays up until Ctrl-C, to try it yourself
#   ./demo.sh --cluster        the same on the cluster of your kubectl context
#
# Read it to learn how rpf is used: every step is one plain command. It
# cleans up everything it made on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
Usage: ./demo.sh [--keep-running]
       ./demo.sh --cluster [--keep] [--load-image CMD] [--client-image IMAGE]

Without a cluster (needs root, ip, curl, python3, cargo): a network
namespace is the "pod"; a local web server is the service on your machine;
`rpf attach --via 'ip netns exec NS rpf-sidecar stdio' 8080:PORT` forwards the
pod's localhost:8080 to it, and curl in the pod fetches the page.

  --keep-running       stay up until Ctrl-C (try `ip netns exec NS curl ...`)

With --cluster (uses kubectl's current context, or KUBECONFIG): builds the
images, loads them into the nodes, installs the webhook, runs a demo pod,
attaches to it and shows the pod reaching this machine; uninstalls on exit.

  --keep               leave the webhook installed on exit
  --load-image CMD     how to load an image archive into the nodes: CMD is run
                       as `CMD ARCHIVE` (also RPF_DEMO_LOAD_IMAGE); default:
                       kind, minikube or k3d, detected from the context
  --render CMD         how to render the manifests, run as `CMD DIR` (also
                       RPF_DEMO_RENDER); default: `kustomize build`, or
                       `kubectl kustomize` with kubectl 1.27+
  --client-image IMG   image of the demo client, which must already be on the
                       nodes or be pullable (default: busybox:1.36; also
                       RPF_DEMO_CLIENT_IMAGE)
EOF
}

# Shows a command as you would type it, then runs it.
run() {
  printf '$ %s\n' "$*"
  "$@"
}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
  printf 'demo.sh: %s\n' "$*" >&2
  exit 1
}

cluster=false keep=false keep_running=false
load_image=${RPF_DEMO_LOAD_IMAGE:-}
render=${RPF_DEMO_RENDER:-}
client_image=${RPF_DEMO_CLIENT_IMAGE:-busybox:1.36}
while [ $# -gt 0 ]; do
  case $1 in
  --cluster) cluster=true ;;
  --keep) keep=true ;;
  --keep-running) keep_running=true ;;
  --load-image) load_image=${2:?--load-image needs a command} && shift ;;
  --client-image) client_image=${2:?--client-image needs an image} && shift ;;
  --render) render=${2:?--render needs a command} && shift ;;
  -h | --help) usage && exit 0 ;;
  *) usage >&2 && die "unknown argument: $1" ;;
  esac
  shift
done

# Checks that each TOOL:DEBIAN_PACKAGE is installed; names the apt-get line if not.
need() {
  local missing=()
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]}; install with: apt-get install -y ${missing[*]}"
}
command -v cargo >/dev/null 2>&1 || die "needs Rust (cargo): https://rustup.rs"

# Everything made below is undone here, whatever way the script ends.
cleanup_steps=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#cleanup_steps[@]} - 1; i >= 0; i--)); do
    eval "${cleanup_steps[i]}" >/dev/null 2>&1 || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
on_exit() { cleanup_steps+=("$(printf '%q ' "$@")"); }

# Stops a background process and waits for it (its pid is in $1).
stop() { kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }

# RPF_DEMO_PROFILE=debug uses a debug build (the tests do: they have one).
profile=${RPF_DEMO_PROFILE:-release}
case $profile in
  release) build_flags=(--release) ;;
  debug) build_flags=() ;;
  *) echo "RPF_DEMO_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}/$profile")

# A service on your machine: python3's web server on a free loopback port
# ($port), serving one page from directory $1.
port=
start_local_service() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  say "A service on your machine: a web server on 127.0.0.1:$port"
  printf '<h1>Hello from your machine</h1>\n<p>served by %s on 127.0.0.1:%s, reached through rpf</p>\n' \
    "$(hostname)" "$port" >"$1/index.html"
  printf '$ %s &\n' "python3 -m http.server $port --bind 127.0.0.1 --directory $1"
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$1" &
  local server=$!
  on_exit stop "$server"
  # Python takes a moment to start on a busy machine: wait until it listens.
  local i
  for ((i = 0; i < 100; i++)); do
    ss -Hltn "sport = :$port" | grep -q . && return
    kill -0 "$server" 2>/dev/null || die "the web server exited; see its messages above"
    sleep 0.1
  done
  die "the web server did not listen on 127.0.0.1:$port within 10 s"
}

build() {
  say "Building rpf (cargo build ${build_flags[*]} --bins; cargo skips what is up to date)"
  cargo build "${build_flags[@]}" --bins --quiet
}

namespace_demo() {
  [ "$(id -u)" -eq 0 ] || die "needs root for network namespaces (ip netns): run sudo ./demo.sh"
  need ip:iproute2 curl:curl python3:python3
  build

  local rpf=$bin/rpf sidecar=$bin/rpf-sidecar
  local ns=rpf-demo-$$ dir
  dir=$(mktemp -d -t rpf-demo.XXXXXX)
  on_exit rm -rf "$dir"

  say "The \"pod\": a network namespace, with its own localhost"
  run ip netns add "$ns"
  on_exit ip netns del "$ns"
  run ip -n "$ns" link set lo up

  start_local_service "$dir"

  say "rpf attach: the pod's localhost:8080 -> your localhost:$port"
  printf '$ %s &\n' "rpf attach --via 'ip netns exec $ns rpf-sidecar stdio' 8080:$port"
  "$rpf" attach --via "ip netns exec $ns $sidecar stdio" "8080:$port" &
  local attach=$!
  on_exit stop "$attach"

  # Wait until the sidecar has bound the port in the pod.
  local i
  for ((i = 0; i < 100; i++)); do
    ip netns exec "$ns" ss -Hltn 'sport = :8080' | grep -q . && break
    kill -0 "$attach" 2>/dev/null || die "rpf attach exited; see its messages above"
    sleep 0.1
  done

  say "Inside the pod: a client reaches localhost:8080"
  run ip netns exec "$ns" curl -sS "http://localhost:8080/"

  if $keep_running; then
    say "Running until Ctrl-C. Try it yourself, from another terminal:"
    echo "  sudo ip netns exec $ns curl http://localhost:8080/"
    wait "$attach"
  else
    say "Done: the pod reached your machine. Cleaning up."
  fi
}

# The webhook's manifests for a server of minor version $1 (Kubernetes 1.$1):
# the default install, or the overlay for clusters too old for it.
overlay_for_minor() {
  if [ "$1" -ge 28 ]; then
    echo manifests
  elif [ "$1" -ge 21 ]; then
    echo manifests/overlays/kubernetes-1.21
  else
    echo manifests/overlays/kubernetes-1.20
  fi
}

# The command that renders the manifests: Kustomize v5 (kubectl 1.27+
# embeds it; an older kubectl, like 1.20's, embeds a Kustomize too old for
# current fields). RPF_DEMO_RENDER or --render wins; else `kustomize build`
# when installed; else `kubectl kustomize` when kubectl is new enough. The
# rendered YAML is then applied with whatever kubectl talks to the cluster.
pick_renderer() {
  [ -n "$render" ] && return
  if command -v kustomize >/dev/null 2>&1; then
    render="kustomize build"
    return
  fi
  local client_minor
  client_minor=$(kubectl version --client -o json | python3 -c 'import json,sys,re; print(re.match(r"\d+", json.load(sys.stdin)["clientVersion"]["minor"]).group())')
  [ "$client_minor" -ge 27 ] ||
    die "kubectl 1.$client_minor embeds a Kustomize too old for rpf's manifests: install kustomize v5, or pass --render 'PATH/TO/NEWER/kubectl kustomize'"
  render="kubectl kustomize"
}

# Loads image archive $1 into the cluster's nodes.
load_image_archive() {
  if [ -n "$load_image" ]; then
    $load_image "$1"
    return
  fi
  local ctx
  ctx=$(kubectl config current-context)
  case $ctx in
  kind-*) kind load image-archive "$1" --name "${ctx#kind-}" ;;
  k3d-*) k3d image import "$1" --cluster "${ctx#k3d-}" ;;
  minikube | minikube-*) minikube image load "$1" --profile "$ctx" ;;
  *) die "cannot tell how to load images into the nodes of context '$ctx': pass --load-image CMD (run as CMD ARCHIVE), e.g. --load-image 'ctr -n k8s.io images import' on a containerd node" ;;
  esac
}

cluster_demo() {
  need kubectl:kubernetes-client curl:curl python3:python3 ss:iproute2
  kubectl version >/dev/null || die "kubectl cannot reach a cluster: set KUBECONFIG or the kubectl context"
  local minor overlay ns=rpf-demo-$$ dir
  minor=$(kubectl version -o json | python3 -c 'import json,sys,re; print(re.match(r"\d+", json.load(sys.stdin)["serverVersion"]["minor"]).group())')
  overlay=$(overlay_for_minor "$minor")
  build

  say "Building the images (images/build.sh) and loading them into the nodes"
  dir=$(mktemp -d -t rpf-demo.XXXXXX)
  on_exit rm -rf "$dir"
  run images/build.sh --out "$dir/images"
  load_image_archive "$dir/images/rpf-sidecar.tar"
  load_image_archive "$dir/images/rpf-webhook.tar"

  pick_renderer
  say "Installing the webhook for Kubernetes 1.$minor: $render $overlay | kubectl apply -f -"
  printf '$ %s\n' "$render $overlay > $dir/install.yaml"
  $render "$overlay" >"$dir/install.yaml"
  $keep || on_exit kubectl delete -f "$dir/install.yaml" --ignore-not-found --wait=false
  run kubectl apply -f "$dir/install.yaml"
  run kubectl -n rpf-system rollout status deploy/rpf-webhook --timeout=120s

  say "The demo workload: a pod that calls its localhost:8080 every 2 s (client image $client_image)"
  $keep || on_exit kubectl delete namespace "$ns" --wait=false
  run kubectl create namespace "$ns"
  printf '$ %s\n' "kubectl -n $ns apply -f manifests/examples/demo.yaml"
  sed "s|image: busybox:1.36|image: $client_image|" manifests/examples/demo.yaml | kubectl -n "$ns" apply -f -
  run kubectl -n "$ns" rollout status deploy/rpf-demo --timeout=120s

  start_local_service "$dir"

  say "rpf attach: the pod's localhost:8080 -> your localhost:$port"
  printf '$ %s &\n' "rpf attach -n $ns deploy/rpf-demo 8080:$port"
  "$bin/rpf" attach -n "$ns" deploy/rpf-demo "8080:$port" &
  local attach=$!
  on_exit stop "$attach"

  say "The pod's client (kubectl logs deploy/rpf-demo -c client) reaching your machine"
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$attach" 2>/dev/null || die "rpf attach exited; see its messages above"
    kubectl -n "$ns" logs deploy/rpf-demo -c client --since=10s 2>/dev/null | grep -q "Hello from your machine" && break
    sleep 1
  done
  run kubectl -n "$ns" logs deploy/rpf-demo -c client --tail=4
  kubectl -n "$ns" logs deploy/rpf-demo -c client --since=10s | grep -q "Hello from your machine" ||
    die "the pod did not reach this machine within a minute"

  if $keep_running; then
    say "Running until Ctrl-C: kubectl -n $ns logs deploy/rpf-demo -c client -f"
    wait "$attach"
  fi
  if $keep; then
    say "Left installed (--keep): remove with kubectl delete namespace $ns; $render $overlay | kubectl delete -f -"
  else
    say "Done: the pod reached your machine. Uninstalling."
  fi
}

if $cluster; then
  cluster_demo
else
  namespace_demo
fi
