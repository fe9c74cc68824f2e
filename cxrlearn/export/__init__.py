"""Export: one file that turns a raw X-ray into class probabilities, for any app to run.

A trained network is not enough for an app: it also needs the exact preprocessing, the
class names and the temperature. `EndToEndModel` puts all of it in one `nn.Module`,

    probs = softmax(model(normalise(repeat(round8(resize(stretch(image)))))) / T),

and the exporters turn that module into a file that runs without Python or cxrlearn:

- **TorchScript** (`export_torchscript`, `.pt`): `torch.jit.script` compiles `forward` and
  everything it calls into a typed intermediate language. Every argument and attribute
  needs a static type, which is why `forward` carries annotations. The reference project
  scripted its network this way for a Flutter app using PyTorch Mobile.
- **Lite interpreter** (`export_lite`, `.ptl`): the scripted module in PyTorch Mobile's
  format, the file the mobile runtime loads.
- **torch.export** (`export_program`, `.pt2`): the successor. It traces the model into an
  ATen-level graph with symbolic shapes; ExecuTorch compiles such programs for phones.

- **ONNX** (`export_onnx`, `.onnx`, module `onnx`): one graph for any ONNX runtime, with the
  class activation maps as outputs, size-generic by design and checked with onnxruntime at
  sizes never traced; `web` wraps it in the offline phone app (`cxrlearn export --format
  web`), run by ONNX Runtime Web in the browser.

TorchScript and the lite interpreter are deprecated upstream: PyTorch warns on every call
and points to `torch.export` and ExecuTorch. cxrlearn writes them because apps built on
PyTorch Mobile still load them, silences only those warnings around those calls, and
teaches the successor next to them.

The package has three modules: `pipeline` (the end-to-end model and its eager reference),
`files` (writing each format, and the parity check that decides whether a written file
counts: loaded back, it must match `eager_probs` on real X-rays to 1e-5), and `load`
(reading a file back as data: `cxrlearn.json` and the weights). Each file holds
`cxrlearn.json` (classes, preprocessing, temperature, a sha256 of the weights, versions).

An exported file is a program, and loading a program runs its code. cxrlearn therefore
never loads the graph of a file it did not just write: `cxrlearn.trained.open_model`, the
one way from a file to a model, reads the weights and settings as data and rebuilds the
network from cxrlearn's own code. The graph inside is for other apps, and was checked
against the Python pipeline when it was written. A trained model exports itself:
`open_model("runs/NAME").export("model.pt")`.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

from cxrlearn.export.files import (
    ExportResult,
    export_lite,
    export_model,
    export_program,
    export_torchscript,
    max_abs_diff,
    sample_check_images,
)
from cxrlearn.export.load import (
    EXPORT_FORMAT,
    FILE_FORMATS,
    ExportMetadata,
    read_metadata,
    read_weights,
    upstream_deprecation,
)
from cxrlearn.export.onnx import export_onnx, read_onnx
from cxrlearn.export.pipeline import EndToEndModel, eager_probs, resize_hw, weights_sha256

__all__ = [
    "EXPORT_FORMAT",
    "FILE_FORMATS",
    "EndToEndModel",
    "ExportMetadata",
    "ExportResult",
    "eager_probs",
    "export_lite",
    "export_model",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "max_abs_diff",
    "read_metadata",
    "read_onnx",
    "read_weights",
    "resize_hw",
    "sample_check_images",
    "upstream_deprecation",
    "weights_sha256",
]
