#!/usr/bin/env python3
"""Build a single-layer container image archive FROM scratch, without a container engine.

The archive holds the image twice over the same blobs, the way `docker save`
(Docker >= 25) writes it, so every common loader accepts it:

* an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`), read by
  `ctr images import`, `skopeo copy oci-archive:...`, `podman load`, `nerdctl load`;
* a docker-archive `manifest.json` pointing at the same blobs, read by `docker load`.

The output is deterministic: every tar entry has a fixed mtime (SOURCE_DATE_EPOCH,
default 0), uid/gid 0 and sorted order, gzip headers carry no timestamp, and JSON is
written with sorted keys, so the same binaries always give the same image digest.

Only the Python standard library is used.

    mkarchive.py --name REPO:TAG --out FILE.tar --file SRC:/DEST [--file ...]
                 [--entrypoint JSON] [--cmd JSON] [--user 65532:65532]
                 [--label K=V]... [--env K=V]...
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time


def epoch():
    """The timestamp stamped on everything (reproducible-builds.org convention)."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def tar_bytes(entries):
    """A deterministic POSIX tar of `entries`: a list of (path, mode, bytes or None for a dir)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, data in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime = epoch()
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data):
    """gzip with no name and mtime 0 in the header, so equal input gives equal output."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def split_ref(ref):
    """'ghcr.io/x/y:1.0' -> ('ghcr.io/x/y', '1.0'); the tag is required."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon <= slash:
        sys.exit(f"mkarchive: image name {ref!r} needs a tag (NAME:TAG)")
    return ref[:colon], ref[colon + 1:]


def build(args):
    files = []
    dirs = set()
    for spec in args.file:
        src, sep, dest = spec.partition(":")
        if not sep or not dest.startswith("/"):
            sys.exit(f"mkarchive: --file wants SRC:/ABSOLUTE/DEST, got {spec!r}")
        with open(src, "rb") as f:
            data = f.read()
        mode = 0o755 if os.access(src, os.X_OK) else 0o644
        rel = dest.lstrip("/")
        files.append((rel, mode, data))
        parent = os.path.dirname(rel)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    entries = files + [(d, 0o755, None) for d in dirs]

    layer = tar_bytes(entries)
    layer_gz = gzip_bytes(layer)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch()))

    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": {
            "User": args.user,
            "Env": args.env or ["PATH=/"],
            "Entrypoint": json.loads(args.entrypoint) if args.entrypoint else None,
            "Cmd": json.loads(args.cmd) if args.cmd else None,
            "Labels": dict(kv.split("=", 1) for kv in args.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created": created, "created_by": "images/mkarchive.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_b = dumps(config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_b),
            "size": len(config_b),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(layer_gz),
                "size": len(layer_gz),
            }
        ],
    }
    manifest_b = dumps(manifest)

    _, tag = split_ref(args.name)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_b),
                "size": len(manifest_b),
                "annotations": {
                    # containerd (ctr, nerdctl) names the image from this one...
                    "io.containerd.image.name": args.name,
                    # ...and the OCI spec (skopeo, podman) from this one.
                    "org.opencontainers.image.ref.name": tag,
                },
                "platform": {"architecture": args.arch, "os": "linux"},
            }
        ],
    }

    def blob(data):
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    docker_manifest = [
        {
            "Config": blob(config_b),
            "RepoTags": [args.name],
            "Layers": [blob(layer_gz)],
        }
    ]

    archive = [
        ("blobs", 0o755, None),
        ("blobs/sha256", 0o755, None),
        (blob(config_b), 0o644, config_b),
        (blob(layer_gz), 0o644, layer_gz),
        (blob(manifest_b), 0o644, manifest_b),
        ("index.json", 0o644, dumps(index)),
        ("manifest.json", 0o644, dumps(docker_manifest)),
        ("oci-layout", 0o644, dumps({"imageLayoutVersion": "1.0.0"})),
    ]
    out = tar_bytes(archive)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, args.out)
    print(f"{args.name} {sha256(manifest_b)} {args.out} ({len(out)} bytes, layer {len(layer_gz)} bytes gzip)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="image reference REPO:TAG")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--file", action="append", default=[], required=True, help="SRC:/DEST, repeatable")
    p.add_argument("--entrypoint", help='JSON list, e.g. ["/rpf-sidecar"]')
    p.add_argument("--cmd", help='JSON list, e.g. ["serve"]')
    p.add_argument("--user", default="65532:65532", help="numeric UID:GID (default 65532:65532)")
    p.add_argument("--env", action="append", default=[], help="K=V, repeatable")
    p.add_argument("--label", action="append", default=[], help="K=V, repeatable")
    p.add_argument("--arch", default="amd64")
    args = p.parse_args()
    uid, _, gid = args.user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        sys.exit(f"mkarchive: --user must be numeric (UID or UID:GID), got {args.user!r}")
    build(args)


if __name__ == "__main__":
    main()
