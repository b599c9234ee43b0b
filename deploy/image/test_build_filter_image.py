#!/usr/bin/env python3
"""Tests of the filter image builder: the OCI layout on disk is checked from scratch, by reading
the files back (not by asking the builder), against the OCI image-layout rules Istio relies on.

    python3 deploy/image/test_build_filter_image.py            # synthetic module (+ real one if built)
    SURGE_FILTER_WASM=path/to/surge_filter.wasm python3 ...    # also the given real module

`SURGE_REQUIRE_REAL_WASM=1` turns a missing real module into a failure (used by
scripts/validate-manifests.sh after `make wasm`).
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import build_filter_image as builder  # noqa: E402

# The smallest valid WebAssembly module (magic + version 1), plus a custom section so that two
# inputs differ.
TINY_WASM = b"\0asm\x01\x00\x00\x00"
TINY_WASM_OTHER = TINY_WASM + b"\x00\x05\x04name"


class LayoutError(AssertionError):
    """The layout on disk breaks a rule; the message says which file and which rule."""


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def blob_path(root, digest):
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise LayoutError(f"digest {digest!r} is not sha256:<64 hex>")
    return os.path.join(root, "blobs", "sha256", hexdigest)


def read_blob(root, descriptor):
    """Read a blob through its descriptor, checking the digest and the size."""
    path = blob_path(root, descriptor["digest"])
    if not os.path.isfile(path):
        raise LayoutError(f"descriptor {descriptor['digest']} points to a missing blob")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != descriptor["size"]:
        raise LayoutError(f"blob {descriptor['digest']}: size {len(data)} != descriptor size {descriptor['size']}")
    return data


def verify_layout(root, tag):
    """Check an OCI image layout independently of the builder; return (manifest, layer bytes)."""
    if read_json(os.path.join(root, "oci-layout")) != {"imageLayoutVersion": "1.0.0"}:
        raise LayoutError("oci-layout must be {\"imageLayoutVersion\": \"1.0.0\"}")
    blob_dir = os.path.join(root, "blobs", "sha256")
    for name in os.listdir(blob_dir):
        with open(os.path.join(blob_dir, name), "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        if actual != name:
            raise LayoutError(f"blob {name} has sha256 {actual}: content does not match its name")
    index = read_json(os.path.join(root, "index.json"))
    if index.get("schemaVersion") != 2:
        raise LayoutError("index.json: schemaVersion must be 2")
    tagged = [m for m in index.get("manifests", [])
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(tagged) != 1:
        raise LayoutError(f"index.json: expected one manifest tagged {tag!r}, found {len(tagged)}")
    if tagged[0]["mediaType"] != builder.OCI_MANIFEST_MEDIA_TYPE:
        raise LayoutError(f"index.json: manifest media type {tagged[0]['mediaType']}")
    manifest = json.loads(read_blob(root, tagged[0]))
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != builder.OCI_MANIFEST_MEDIA_TYPE:
        raise LayoutError("manifest: schemaVersion 2 and the OCI manifest media type are required")
    read_blob(root, manifest["config"])
    layers = manifest.get("layers", [])
    if len(layers) != 1:
        raise LayoutError(f"manifest: Istio expects exactly one layer, found {len(layers)}")
    referenced = {tagged[0]["digest"], manifest["config"]["digest"], layers[0]["digest"]}
    on_disk = {f"sha256:{n}" for n in os.listdir(blob_dir)}
    if on_disk != referenced:
        raise LayoutError(f"blobs not referenced by the manifest: {sorted(on_disk - referenced)}")
    return tagged[0], manifest, read_blob(root, layers[0])


def wasm_in_layer(root, manifest, layer):
    """The module Istio would load from this image, for either format."""
    media_type = manifest["layers"][0]["mediaType"]
    if media_type == builder.WASM_LAYER_MEDIA_TYPE:
        if manifest["config"]["mediaType"] != builder.WASM_CONFIG_MEDIA_TYPE:
            raise LayoutError("wasm artifact: config media type must be " + builder.WASM_CONFIG_MEDIA_TYPE)
        return layer
    if media_type == builder.OCI_TAR_GZIP_LAYER_MEDIA_TYPE:
        uncompressed = gzip.decompress(layer)
        config = json.loads(read_blob(root, manifest["config"]))
        diff_id = "sha256:" + hashlib.sha256(uncompressed).hexdigest()
        if config["rootfs"]["diff_ids"] != [diff_id]:
            raise LayoutError("compat image: config rootfs.diff_ids does not match the layer")
        with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
            member = tar.extractfile(builder.COMPAT_FILE_NAME)
            if member is None:
                raise LayoutError("compat image: no plugin.wasm in the layer")
            return member.read()
    raise LayoutError(f"layer media type {media_type} is neither Istio wasm format")


class BuilderTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def write(self, name, data):
        path = os.path.join(self.tmp.name, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def build(self, wasm_path, fmt, out_name):
        out = os.path.join(self.tmp.name, out_name)
        return out, builder.build(wasm_path, out, "0.1.0", fmt)

    def check_module(self, wasm_path):
        with open(wasm_path, "rb") as f:
            wasm = f.read()
        for fmt in ("wasm", "compat"):
            with self.subTest(format=fmt):
                out, returned = self.build(wasm_path, fmt, f"out-{fmt}")
                tagged, manifest, layer = verify_layout(out, "0.1.0")
                self.assertEqual(tagged["digest"], returned["digest"])
                self.assertEqual(wasm_in_layer(out, manifest, layer), wasm, "the layer must carry the .wasm")

    def test_layout_digests_and_layer_are_right_for_a_small_module(self):
        self.check_module(self.write("tiny.wasm", TINY_WASM))

    def test_layout_digests_and_layer_are_right_for_the_real_filter(self):
        path = os.environ.get("SURGE_FILTER_WASM") or os.path.join(
            REPO, "target", "wasm", "surge_filter.wasm")
        if not os.path.isfile(path):
            if os.environ.get("SURGE_REQUIRE_REAL_WASM") == "1":
                self.fail(f"{path} is missing: run `make wasm` first")
            self.skipTest(f"{path} not built (run `make wasm`)")
        self.check_module(path)

    def test_the_wasm_artifact_layer_is_the_module_itself(self):
        out, _ = self.build(self.write("tiny.wasm", TINY_WASM), "wasm", "out")
        _, manifest, layer = verify_layout(out, "0.1.0")
        self.assertEqual(manifest["layers"][0]["mediaType"], "application/vnd.module.wasm.content.layer.v1+wasm")
        self.assertEqual(manifest["layers"][0]["digest"], "sha256:" + hashlib.sha256(TINY_WASM).hexdigest())
        self.assertEqual(layer, TINY_WASM)

    def test_same_module_gives_the_same_digest_and_another_module_a_different_one(self):
        a = self.write("a.wasm", TINY_WASM)
        b = self.write("b.wasm", TINY_WASM_OTHER)
        for fmt in ("wasm", "compat"):
            with self.subTest(format=fmt):
                _, first = self.build(a, fmt, f"{fmt}-1")
                _, again = self.build(a, fmt, f"{fmt}-2")
                _, other = self.build(b, fmt, f"{fmt}-3")
                self.assertEqual(first["digest"], again["digest"])
                self.assertNotEqual(first["digest"], other["digest"])

    def test_a_file_that_is_not_wasm_is_refused(self):
        with self.assertRaisesRegex(builder.BuildError, "not a WebAssembly module"):
            self.build(self.write("x.wasm", b"#!/bin/sh\n"), "wasm", "out")

    def test_a_non_empty_output_folder_is_refused(self):
        wasm = self.write("tiny.wasm", TINY_WASM)
        self.build(wasm, "wasm", "out")
        with self.assertRaisesRegex(builder.BuildError, "not empty"):
            self.build(wasm, "wasm", "out")

    def test_the_verifier_catches_a_blob_whose_content_does_not_match_its_name(self):
        out, manifest = self.build(self.write("tiny.wasm", TINY_WASM), "wasm", "out")
        layer_digest = json.loads(read_blob(out, manifest))["layers"][0]["digest"]
        with open(blob_path(out, layer_digest), "ab") as f:
            f.write(b"tampered")
        with self.assertRaisesRegex(LayoutError, "does not match its name"):
            verify_layout(out, "0.1.0")

    def test_the_verifier_catches_a_wrong_tag(self):
        out, _ = self.build(self.write("tiny.wasm", TINY_WASM), "wasm", "out")
        with self.assertRaisesRegex(LayoutError, "tagged"):
            verify_layout(out, "9.9.9")


if __name__ == "__main__":
    unittest.main(verbosity=2)
