#!/usr/bin/env python3
"""Package the Surge filter (.wasm) as an OCI image that Istio's WasmPlugin can pull (`oci://`).

No Docker engine, no registry, no third-party module: this writes an OCI image layout
(https://github.com/opencontainers/image-spec/blob/main/image-layout.md) into a folder:

    OUT/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    OUT/index.json                 -> the manifest, tagged with org.opencontainers.image.ref.name
    OUT/blobs/sha256/<hex>         manifest, config and the one layer, each named by its sha256

Two formats, both accepted by Istio's image fetcher (istio/istio pkg/wasm):

* `wasm` (default): an OCI artifact whose config has media type
  application/vnd.module.wasm.config.v1+json and whose single layer IS the .wasm, with media type
  application/vnd.module.wasm.content.layer.v1+wasm.
* `compat`: a regular OCI image (what `docker build` of `FROM scratch` + `COPY plugin.wasm` gives):
  one gzip'd tar layer holding `plugin.wasm`, for registries or scanners that only take images.

The output is reproducible: the same .wasm gives the same manifest digest, byte for byte (sorted
JSON, tar entries with mtime 0 and uid/gid 0, gzip without a timestamp). That digest is what a
WasmPlugin pins in `spec.sha256` (Istio compares it with the digest of the pulled manifest).

Push the layout to a registry with any OCI tool, keeping the digest, e.g.
    skopeo copy --preserve-digests oci:OUT:TAG docker://ghcr.io/surge-autoscaler/surge-filter:TAG
    oras cp --from-oci-layout OUT:TAG ghcr.io/surge-autoscaler/surge-filter:TAG
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

WASM_CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_TAR_GZIP_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_MAGIC = b"\0asm"
# Istio's compat format looks for this file name inside the layer.
COMPAT_FILE_NAME = "plugin.wasm"


class BuildError(Exception):
    """A problem with the input or the output folder, explained in one sentence."""


def canonical_json(value):
    """Stable bytes for a JSON document, so that digests do not depend on dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


class Layout:
    """Accumulates content-addressed blobs and writes them under OUT/blobs/sha256/."""

    def __init__(self, out):
        self.out = out
        self.blob_dir = os.path.join(out, "blobs", "sha256")

    def add_blob(self, media_type, data, annotations=None):
        digest = sha256_hex(data)
        os.makedirs(self.blob_dir, exist_ok=True)
        with open(os.path.join(self.blob_dir, digest), "wb") as f:
            f.write(data)
        descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor


def deterministic_tar_gz(name, data):
    """A gzip'd tar holding one file, identical bytes for identical input."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(uncompressed)
    return uncompressed, compressed.getvalue()


def build(wasm_path, out, tag, fmt="wasm", source=None):
    """Write the OCI layout for `wasm_path` into `out`; return the manifest descriptor."""
    try:
        with open(wasm_path, "rb") as f:
            wasm = f.read()
    except OSError as e:
        raise BuildError(f"cannot read the filter module {wasm_path}: {e.strerror}") from e
    if not wasm.startswith(WASM_MAGIC):
        raise BuildError(f"{wasm_path} is not a WebAssembly module (no \\0asm magic)")
    if fmt not in ("wasm", "compat"):
        raise BuildError(f"unknown format {fmt!r}: use wasm or compat")
    if os.path.exists(out) and os.listdir(out):
        raise BuildError(f"output folder {out} exists and is not empty; remove it first")
    os.makedirs(out, exist_ok=True)
    layout = Layout(out)

    if fmt == "wasm":
        layer = layout.add_blob(WASM_LAYER_MEDIA_TYPE, wasm,
                                {"org.opencontainers.image.title": COMPAT_FILE_NAME})
        config = layout.add_blob(WASM_CONFIG_MEDIA_TYPE, canonical_json({}))
    else:
        uncompressed, compressed = deterministic_tar_gz(COMPAT_FILE_NAME, wasm)
        layer = layout.add_blob(OCI_TAR_GZIP_LAYER_MEDIA_TYPE, compressed)
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256_hex(uncompressed)}"]},
        }
        config = layout.add_blob(OCI_CONFIG_MEDIA_TYPE, canonical_json(image_config))

    manifest_annotations = {"org.opencontainers.image.title": "surge-filter"}
    if source:
        manifest_annotations["org.opencontainers.image.source"] = source
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [layer],
        "annotations": manifest_annotations,
    }
    manifest = layout.add_blob(OCI_MANIFEST_MEDIA_TYPE, canonical_json(manifest_doc))
    tagged = dict(manifest)
    tagged["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [tagged]}
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical_json(index))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default="target/wasm/surge_filter.wasm",
                    help="the filter module (default: %(default)s)")
    ap.add_argument("--out", default="target/oci/surge-filter",
                    help="output folder for the OCI layout (default: %(default)s)")
    ap.add_argument("--tag", default="0.1.0", help="tag recorded in index.json (default: %(default)s)")
    ap.add_argument("--format", choices=("wasm", "compat"), default="wasm",
                    help="wasm: OCI wasm artifact (default); compat: image with plugin.wasm in a tar layer")
    ap.add_argument("--source", default="https://github.com/surge-autoscaler/surge",
                    help="org.opencontainers.image.source annotation")
    args = ap.parse_args(argv)
    try:
        manifest = build(args.wasm, args.out, args.tag, args.format, args.source)
    except BuildError as e:
        print(f"build_filter_image: {e}", file=sys.stderr)
        return 1
    digest = manifest["digest"].split(":", 1)[1]
    print(f"wrote {args.out} ({args.format} format, tag {args.tag})")
    print(f"manifest digest: sha256:{digest}")
    print(f"WasmPlugin spec.sha256: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
