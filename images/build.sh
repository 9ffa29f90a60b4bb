#!/usr/bin/env bash
# Build the rpf container images WITHOUT a container engine.
#
#   images/build.sh [--out DIR] [--tag TAG] [--push REGISTRY/PREFIX [--insecure]] [--no-build]
#
# 1. builds rpf-sidecar and rpf-webhook as static release binaries
#    (x86_64-unknown-linux-musl when that rustup target is installed, otherwise
#    the gnu target with +crt-static) and checks that they are static;
# 2. writes one image archive per image into DIR (default target/images):
#      DIR/rpf-sidecar.tar   (binary at /rpf-sidecar, USER 65532:65532)
#      DIR/rpf-webhook.tar   (binary at /rpf-webhook, USER 65532:65532)
#    Each is an OCI image layout plus a docker-archive manifest over the same
#    blobs: `ctr -n k8s.io images import`, `docker load`, `podman load` and
#    `skopeo copy oci-archive:` all accept it.
#
# Image names and the default tag come from manifests/base/images.env (the
# Kustomize manifests carry the same defaults; a test checks it). --tag
# replaces the tag of both images (e.g. for a development build).
#
# --push REGISTRY/PREFIX then copies both archives to
# REGISTRY/PREFIX/rpf-sidecar:TAG and REGISTRY/PREFIX/rpf-webhook:TAG with
# skopeo (no daemon: apt-get install skopeo; log in with `skopeo login`), and
# prints the `kustomize edit set image` command that pins them by digest.
# --insecure: plain HTTP / unverified TLS (a local registry). --no-build:
# push the archives already in DIR.
#
# Honors CARGO_TARGET_DIR and SOURCE_DATE_EPOCH (default 0: reproducible).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/target/images
tag=
push=
insecure=
build=1

usage() { sed -n '2,27s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --push) push=${2:?--push needs REGISTRY/PREFIX}; shift 2 ;;
    --push=*) push=${1#--push=}; shift ;;
    --insecure) insecure=1; shift ;;
    --no-build) build=; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

need() { command -v "$1" >/dev/null || { echo "build.sh: '$1' not found: install $2" >&2; exit 1; }; }
if [ -n "$build" ]; then
  need cargo "Rust (https://rustup.rs)"
  need python3 "Python 3"
  need file "the 'file' utility (apt-get install file)"
fi
[ -z "$push" ] || need skopeo "skopeo (apt-get install skopeo)"

# --- names -----------------------------------------------------------------
env_file=$root/manifests/base/images.env
get() { sed -n "s/^$1=//p" "$env_file"; }
sidecar_ref=$(get RPF_SIDECAR_IMAGE)
webhook_ref=$(get RPF_WEBHOOK_IMAGE)
[ -n "$sidecar_ref" ] && [ -n "$webhook_ref" ] || { echo "build.sh: $env_file must set RPF_SIDECAR_IMAGE and RPF_WEBHOOK_IMAGE" >&2; exit 1; }
if [ -n "$tag" ]; then
  sidecar_ref=${sidecar_ref%:*}:$tag
  webhook_ref=${webhook_ref%:*}:$tag
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
repository=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' "$root/Cargo.toml")

if [ -n "$build" ]; then
# --- static binaries -------------------------------------------------------
musl=x86_64-unknown-linux-musl
# ring (TLS in the webhook) compiles C, so the musl target also needs a musl C
# compiler: x86_64-linux-musl-gcc or musl-gcc (Debian/Ubuntu: apt-get install musl-tools).
musl_cc=${CC_x86_64_unknown_linux_musl:-}
[ -n "$musl_cc" ] || musl_cc=$(command -v x86_64-linux-musl-gcc || command -v musl-gcc || true)
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$musl" && [ -n "$musl_cc" ]; then
  target=$musl
  export CC_x86_64_unknown_linux_musl=$musl_cc
else
  target=x86_64-unknown-linux-gnu
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
  echo "build.sh: no $musl target with a musl C compiler (rustup target add $musl; apt-get install musl-tools)," \
    "building $target with +crt-static instead" >&2
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
# The dist profile: fat LTO, one codegen unit (smallest binaries).
(cd "$root" && cargo build --profile dist --target "$target" -p rpf-sidecar -p rpf-webhook)

bin_dir=$target_dir/$target/dist
for b in rpf-sidecar rpf-webhook; do
  desc=$(file -L "$bin_dir/$b")
  case $desc in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "build.sh: $bin_dir/$b is not static: $desc" >&2; exit 1 ;;
  esac
  if command -v ldd >/dev/null && ldd "$bin_dir/$b" 2>&1 | grep -q '=>'; then
    echo "build.sh: $bin_dir/$b links shared libraries:" >&2; ldd "$bin_dir/$b" >&2; exit 1
  fi
done

# --- archives --------------------------------------------------------------
mkdir -p "$out"
labels=(--label "org.opencontainers.image.version=$version"
        --label "org.opencontainers.image.source=$repository"
        --label "org.opencontainers.image.licenses=Apache-2.0")
python3 "$root/images/mkarchive.py" --name "$sidecar_ref" --out "$out/rpf-sidecar.tar" \
  --file "$bin_dir/rpf-sidecar:/rpf-sidecar" --entrypoint '["/rpf-sidecar"]' --cmd '["serve"]' \
  --user 65532:65532 "${labels[@]}" --label "org.opencontainers.image.title=rpf-sidecar"
python3 "$root/images/mkarchive.py" --name "$webhook_ref" --out "$out/rpf-webhook.tar" \
  --file "$bin_dir/rpf-webhook:/rpf-webhook" --entrypoint '["/rpf-webhook"]' \
  --user 65532:65532 "${labels[@]}" --label "org.opencontainers.image.title=rpf-webhook"

echo
printf '%-14s %12s  %s\n' binary bytes path
for b in rpf-sidecar rpf-webhook; do
  printf '%-14s %12s  %s\n' "$b" "$(stat -c %s "$bin_dir/$b")" "$bin_dir/$b"
done
printf '%-14s %12s  %s\n' archive bytes image
printf '%-14s %12s  %s\n' rpf-sidecar.tar "$(stat -c %s "$out/rpf-sidecar.tar")" "$sidecar_ref"
printf '%-14s %12s  %s\n' rpf-webhook.tar "$(stat -c %s "$out/rpf-webhook.tar")" "$webhook_ref"
fi

# --- push ------------------------------------------------------------------
push_images() {
  local tls=() name ref digest dest
  [ -z "$insecure" ] || tls=(--dest-tls-verify=false)
  local set_image=()
  for name in rpf-sidecar rpf-webhook; do
    [ "$name" = rpf-sidecar ] && ref=$sidecar_ref || ref=$webhook_ref
    dest=${push%/}/$name:${ref##*:}
    skopeo copy -q "${tls[@]}" --digestfile "$out/$name.digest" "oci-archive:$out/$name.tar" "docker://$dest"
    digest=$(cat "$out/$name.digest")
    echo "pushed $dest@$digest"
    set_image+=("${ref%:*}=${push%/}/$name@$digest")
  done
  echo
  echo "Use them (in manifests/, or in the overlay you install):"
  echo "  kustomize edit set image ${set_image[*]}"
}
[ -z "$push" ] || push_images
