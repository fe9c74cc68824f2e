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

TorchScript and the lite interpreter are deprecated upstream: PyTorch warns on every call
and points to `torch.export` and ExecuTorch. cxrlearn writes them because apps built on
PyTorch Mobile still load them, silences only those warnings around those calls, and
teaches the successor next to them.

A file is only kept when it proves itself: it is saved to a temporary file, loaded back,
and its probabilities on real X-rays must match the eager Python pipeline (`eager_probs`)
to 1e-5. Each file holds `cxrlearn.json` (classes, preprocessing, temperature, a sha256 of
the weights, versions) that `load_exported` checks.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

from cxrlearn.export.files import ExportResult, export_lite, export_program, export_torchscript
from cxrlearn.export.load import ExportedModel, is_export, load_exported, upstream_deprecation
from cxrlearn.export.metadata import EXPORT_FORMAT, FILE_FORMATS, ExportMetadata, read_metadata
from cxrlearn.export.parity import sample_check_images
from cxrlearn.export.pipeline import (
    EndToEndModel,
    Preprocess,
    eager_input,
    eager_probs,
    resize_hw,
    weights_sha256,
)

__all__ = [
    "EXPORT_FORMAT",
    "FILE_FORMATS",
    "EndToEndModel",
    "ExportMetadata",
    "ExportResult",
    "ExportedModel",
    "Preprocess",
    "eager_input",
    "eager_probs",
    "export_lite",
    "export_program",
    "export_torchscript",
    "is_export",
    "load_exported",
    "read_metadata",
    "resize_hw",
    "sample_check_images",
    "upstream_deprecation",
    "weights_sha256",
]
