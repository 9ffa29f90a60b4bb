# syntax=docker/dockerfile:1
#
# rpf images, for machines with a container engine:
#
#   docker build --target sidecar -t ghcr.io/rpf-dev/rpf-sidecar:0.1.0 .
#   docker build --target webhook -t ghcr.io/rpf-dev/rpf-webhook:0.1.0 .
#
# (podman/buildah work the same.) Without a container engine, images/build.sh
# builds the same images as archives. Image names and tags are set in
# manifests/base/images.env (the manifests: `kustomize edit set image`).
#
# Both images are a single static binary on `scratch`, run as the numeric
# non-root user 65532 (Pod Security "restricted" can verify it), and need no
# writable filesystem.

# Keep in step with rust-version in Cargo.toml (a test checks it).
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
# musl-tools: the musl C compiler that ring (TLS) needs for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools file \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    export CC_"$(echo "$target" | tr - _)"=musl-gcc; \
    cargo build --profile dist --locked --target "$target" -p rpf-sidecar -p rpf-webhook; \
    mkdir -p /out; \
    for b in rpf-sidecar rpf-webhook; do \
      cp "target/$target/dist/$b" /out/; \
      file /out/$b | grep -Eq 'static(-pie)? linked' || { echo "$b is not static"; exit 1; }; \
    done

FROM scratch AS sidecar
COPY --from=builder /out/rpf-sidecar /rpf-sidecar
USER 65532:65532
ENTRYPOINT ["/rpf-sidecar"]
CMD ["serve"]

FROM scratch AS webhook
COPY --from=builder /out/rpf-webhook /rpf-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/rpf-webhook"]
