"""ONNX Runtime Web, pinned: fetched once from the npm registry, checked, copied into each app.

The phone app runs the model with ONNX Runtime Web's WebAssembly build: three files, about
15 MB, too large to keep in the repository. `fetch_runtime` fetches the pinned package with
`npm pack onnxruntime-web@VERSION` (the npm registry's ordinary client, run once by
`scripts/setup.sh`), checks the tarball's sha256, and keeps the three files in the cache;
`runtime_files` checks each file's sha256 every time an app is written. Nothing is ever
loaded from a CDN: the app carries its runtime, which is what lets it work offline.

    ort.wasm.min.js                 the JavaScript API (`ort.InferenceSession`), CPU only
    ort-wasm-simd-threaded.mjs      the WebAssembly module's loader, imported by the above
    ort-wasm-simd-threaded.wasm     onnxruntime itself, compiled to WebAssembly

ONNX Runtime is MIT-licensed (Copyright (c) Microsoft Corporation); the licence travels with
the files (`static/onnxruntime-web-LICENSE.txt`, copied from the onnxruntime repository: the
npm package states "MIT" and carries the notice in its file headers only).

Run `python -m cxrlearn.export.web.runtime` to fetch it by hand.

Lesson: lessons/09_on_the_phone.ipynb
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cxrlearn.atomic import temporary_folder
from cxrlearn.data import default_cache_dir
from cxrlearn.errors import CxrlearnError

__all__ = ["ORT_WEB_VERSION", "RUNTIME_FILES", "fetch_runtime", "main", "runtime_dir",
           "runtime_files"]

ORT_WEB_VERSION = "1.31.1"
"""The onnxruntime-web release the app ships (npm); Python's onnxruntime is pinned apart."""
TARBALL_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
"""sha256 of `onnxruntime-web-1.31.1.tgz` as `npm pack` fetched it."""
RUNTIME_FILES = {
    "ort.wasm.min.js": "b8a78c408c40da65fdc8ba0846f7b2948e92a4c6d6b23cc8e4165e428ad95443",
    "ort-wasm-simd-threaded.mjs":
        "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
    "ort-wasm-simd-threaded.wasm":
        "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
}
"""The files the app needs (from the package's `dist/`), and their sha256."""
LICENSE_NAME = "onnxruntime-web-LICENSE.txt"


def runtime_dir() -> Path:
    """The cache folder of the pinned runtime: `<cache>/onnxruntime-web-<VERSION>`."""
    return default_cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def runtime_files() -> dict[str, Path]:
    """The runtime's files in the cache, each checked against its sha256.

    Raises:
        CxrlearnError: A file is missing (not fetched yet) or changed.
    """
    folder = runtime_dir()
    found = {}
    for name, digest in RUNTIME_FILES.items():
        path = folder / name
        if not path.is_file():
            raise CxrlearnError(
                f"ONNX Runtime Web {ORT_WEB_VERSION} is not in the cache; fetch it once with "
                "scripts/setup.sh or python -m cxrlearn.export.web.runtime (needs npm)",
                path=path)
        if _sha256(path) != digest:
            raise CxrlearnError("does not match its pinned sha256; delete the folder and "
                                "fetch it again (python -m cxrlearn.export.web.runtime)",
                                path=path)
        found[name] = path
    return found


def fetch_runtime(tarball: str | Path | None = None) -> Path:
    """Fetch the pinned package with `npm pack` (or take a downloaded `tarball`), check it,
    and keep its three files in `runtime_dir()`. Does nothing when they are there already.

    Returns:
        The runtime's folder.

    Raises:
        CxrlearnError: npm is missing or fails, or the tarball's sha256 is not the pinned one.
    """
    try:
        runtime_files()
        return runtime_dir()
    except CxrlearnError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        if tarball is None:
            npm = shutil.which("npm")
            if npm is None:
                raise CxrlearnError("npm is needed once to fetch ONNX Runtime Web (or pass the "
                                    f"onnxruntime-web-{ORT_WEB_VERSION}.tgz tarball)")
            done = subprocess.run(
                [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--pack-destination", tmp],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise CxrlearnError(f"npm pack failed: {done.stderr.strip()[-300:]}")
            tarball = Path(tmp) / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
        tarball = Path(tarball)
        if _sha256(tarball) != TARBALL_SHA256:
            raise CxrlearnError("the onnxruntime-web tarball does not match its pinned sha256",
                                path=tarball)
        folder = runtime_dir()
        with temporary_folder(folder, "the runtime folder") as staging, \
                tarfile.open(tarball, "r:gz") as tar:
            out = staging / folder.name
            out.mkdir()
            for name in RUNTIME_FILES:  # by name only: nothing else of the archive is written
                member = tar.extractfile(f"package/dist/{name}")
                if member is None:
                    raise CxrlearnError(f"the tarball has no dist/{name}", path=tarball)
                (out / name).write_bytes(member.read())
            shutil.rmtree(folder, ignore_errors=True)
            out.replace(folder)
    runtime_files()  # the files' own checksums
    return folder


def main() -> None:
    """Fetch the runtime now (scripts/setup.sh calls this): one line, or one error line."""
    try:
        print(f"ONNX Runtime Web {ORT_WEB_VERSION} is in {fetch_runtime()}")
    except CxrlearnError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
