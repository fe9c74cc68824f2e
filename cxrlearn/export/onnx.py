"""ONNX: the whole pipeline as one graph that any ONNX runtime runs, a phone's browser too.

ONNX is an open file format for computation graphs, with many runtimes: onnxruntime in
Python and C++, and ONNX Runtime Web, which runs the same file in a browser through
WebAssembly. `export_onnx` writes `EndToEndModel` (stretch, resize, 8 bits, normalise, the
network, T, softmax) as one self-contained `.onnx` file (weights inside, opset 18) with three
outputs:

    probs     (B, K)        calibrated class probabilities
    features  (B, C, h, w)  A, the output of the last block (`layer4`)
    cams      (B, K, h, w)  sum_c W[k, c] A[c], one class activation map per class

**Why the map needs no gradient.** ResNet18 ends with global average pooling and one linear
layer, so the score of class k is y_k = sum_c W[k, c] mean_ij A[c, i, j] + b_k. Its gradient
is d y_k / d A[c, i, j] = W[k, c] / (h w), the same at every place, so Grad-CAM's channel
weight is alpha_c = W[k, c] / (h w) and

    Grad-CAM_k = ReLU(sum_c alpha_c A[c]) = ReLU(sum_c W[k, c] A[c]) / (h w) = CAM_k / (h w).

After min-max normalisation the factor 1 / (h w) is gone: Grad-CAM at the last block *is* CAM
(Zhou et al. 2016, arXiv:1512.04150), a product of two tensors the graph already has. The
phone computes `cams` in the forward pass, then only ReLU, upsampling and normalisation
(`cam_for_class`, and the same lines in the web page's script).

**Any image size, by design.** `torch.onnx.export(dynamo=True)` traces the model with symbolic
shapes, and silently turns Python numbers computed from a shape into constants.
`contrast.percentile_tensor` takes the rank of the 2nd percentile as `int((q / 100) (n - 1))`:
traced at 300 x 280, the graph gathers the sorted pixels at ranks fixed for 84,000 pixels, and
at 512 x 512 it answers wrongly with no error (0.12 in probability, measured). Two designs
avoid that: a fixed input size that every caller resizes to first (what `export_program`
does), or a graph that computes the rank from the run-time pixel count. We choose the second
(`percentile_by_shape`: the count is a tensor made from the input's shape, and floor, gather
and interpolation are graph operations), because the stretch must see the *full-size* image
to match training: resizing first moves the percentiles, and a phone app would have to
reproduce the resize exactly. The parity check below proves the choice at sizes the tracer
never saw (117 x 101, 299 x 299, 512 x 512, 1024 x 900, float and uint8, a batch): every
probability within 1e-4 of the eager pipeline, or no file is written.

The file holds its description in `metadata_props` (class names, preprocessing, temperature,
the weights' sha256, the cxrlearn version, the warning that this is not a diagnostic device)
and a sha256 of its own graph, so that a reader can verify it (`read_onnx`) before running it
with onnxruntime, which runs no Python code. `quantize="int8"` adds static quantization
(onnxruntime.quantization, calibrated on training images): a file about four times smaller.

Lesson: lessons/09_on_the_phone.ipynb
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cxrlearn
from cxrlearn.atomic import temporary_folder
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.calibration import plausible_temperature
from cxrlearn.export.files import ExportResult, max_abs_diff, sample_check_images
from cxrlearn.export.load import METADATA_NAME, ExportMetadata
from cxrlearn.export.pipeline import EndToEndModel, eager_probs, resize_hw, weights_sha256
from cxrlearn.transforms import Preprocess

__all__ = [
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "WARNING",
    "OnnxModel",
    "OnnxPipeline",
    "cam_for_class",
    "export_onnx",
    "onnx_check_images",
    "percentile_by_shape",
    "read_onnx",
]

ONNX_OPSET = 18
"""The ONNX operator set: 18 is the first whose `Resize` can antialias, as training does."""
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "features", "cams")
WARNING = ("A teaching tool, not a diagnostic device: its answers are not a medical opinion "
           "and must not guide anyone's care.")
"""Written into every file and shown by the web page (the app's `DISCLAIMER`, word for word)."""
CHECK_SIZES = ((299, 299), (512, 512), (1024, 900))
"""Sizes the parity check adds to the sample's 128 x 128 and 117 x 101; none is traced."""
TRACE_SIZE = (300, 280)
"""The example input's size: deliberately none of the checked sizes."""
INT8_ATOL = 0.05
"""Largest |p_int8 - p_python| accepted: int8 weights round, the preprocessing does not."""
GRAPH_SHA256 = "graph_sha256"
MAX_ONNX_BYTES = 1 << 30  # ResNet18 is 45 MB; a gigabyte is not a cxrlearn file


def percentile_by_shape(values: Tensor, q: float) -> Tensor:
    """The q-th percentile of each row of *sorted* values, its rank taken from the shape.

    `contrast.percentile_tensor` computes the rank as a Python number; an exporter turns it
    into a constant. Here the pixel count n is a tensor (a sum of ones along the row, which
    the exporter writes as shape arithmetic of the run-time input), and floor, clamp and
    gather are graph operations, so the file takes the percentile at the right rank for any
    image size. Same interpolation as numpy's default (`linear`).

    Shape:
        values: (B, N) sorted along N -> (B, 1)
    """
    b = values.shape[0]
    n = torch.ones_like(values[0]).sum()  # () float64: the run-time pixel count N
    pos = (q / 100.0) * (n - 1)  # fractional rank
    lo = torch.floor(pos)
    hi = torch.minimum(lo + 1, n - 1)
    rank_lo = lo.to(torch.int64).reshape(1, 1).expand(b, 1)  # (B, 1)
    rank_hi = hi.to(torch.int64).reshape(1, 1).expand(b, 1)  # (B, 1)
    v_lo, v_hi = values.gather(1, rank_lo), values.gather(1, rank_hi)  # (B, 1) each
    return v_lo + (v_hi - v_lo) * (pos - lo)


class OnnxPipeline(nn.Module):
    """`EndToEndModel` rewritten for a size-generic graph, with the CAM outputs.

    The same steps as `EndToEndModel.forward` (see there), with two changes an exporter
    needs: the percentiles come from `percentile_by_shape`, and the image is always resized
    (`transforms.resize` skips an image already S x S; bilinear antialiased resizing to the
    same size is the identity, so the skip changes nothing but a branch on the shape). The
    network runs stage by stage, to keep the last block's output A.

    Args:
        pipeline: The eager pipeline; its network must be a cxrlearn (torchvision) ResNet.

    Shape:
        image: (B, 1, H, W) float32 in [0, 1] -> probs (B, K), features (B, C, h, w),
        cams (B, K, h, w)
    """

    def __init__(self, pipeline: EndToEndModel) -> None:
        super().__init__()
        missing = [n for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                               "layer3", "layer4", "avgpool", "fc")
                   if not hasattr(pipeline.model, n)]
        if missing:
            raise CxrlearnError("ONNX export with class activation maps needs a ResNet "
                                f"(no {', '.join(missing)} in {type(pipeline.model).__name__})")
        self.pipeline = pipeline

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p, net = self.pipeline, self.pipeline.model
        b = image.shape[0]
        flat = image.reshape(b, -1).to(torch.float64)  # (B, H*W); float64 as contrast does
        values, _ = torch.sort(flat, dim=1)
        p_low = percentile_by_shape(values, p.low)  # (B, 1)
        p_high = percentile_by_shape(values, p.high)  # (B, 1)
        width = p_high - p_low
        has_window = width > 0
        scaled = (flat - p_low) / torch.where(has_window, width, torch.ones_like(width))
        step = (flat > p_low).to(torch.float64)  # the empty window's limit (contrast.py)
        x = torch.where(has_window, scaled, step).clamp(0.0, 1.0)
        x = x.reshape(image.shape).to(torch.float32)  # (B, 1, H, W)
        x = F.interpolate(x, size=(p.image_size, p.image_size), mode="bilinear",
                          align_corners=False, antialias=True)  # (B, 1, S, S)
        x = (x * 255.0).round().clamp(0.0, 255.0) / 255.0  # 8 bits, as transforms.prepare
        x = (x.expand(-1, p.channels, -1, -1) - p.mean) / p.std  # (B, C, S, S)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        acts = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, C, h, w): A
        logits = net.fc(torch.flatten(net.avgpool(acts), 1))  # (B, K)
        probs = torch.softmax(logits / p.temperature, dim=1)
        cams = torch.einsum("kc,bchw->bkhw", net.fc.weight, acts)  # (B, K, h, w)
        return probs, acts, cams


def cam_for_class(cams: np.ndarray, target: int, size: int) -> np.ndarray:
    """The map the web page draws: ReLU, bilinear upsampling to S x S, min-max to [0, 1].

    The steps `gradcam.GradCAM` takes after its weighted sum; with `cams` from the file it
    equals Grad-CAM at the last block (module docstring). The page's script does the same.

    Shape:
        cams: (K, h, w) -> (S, S)
    """
    raw = torch.relu(torch.from_numpy(np.asarray(cams[target], dtype=np.float32)))  # (h, w)
    up = F.interpolate(raw[None, None], size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0]  # (S, S)
    span = float(up.max() - up.min())
    return ((up - up.min()) / (span if span > 0 else 1.0)).numpy()


def onnx_check_images() -> list[np.ndarray]:
    """Real X-rays at sizes an ONNX file was not traced at: the sample's (128 x 128 and its
    117 x 101 crop) and the first one resized to each of `CHECK_SIZES`.

    Shape:
        -> N x (H, W) float32 in [0, 1]
    """
    images = sample_check_images()
    return [*images, *(resize_hw(images[0], hw) for hw in CHECK_SIZES)]


@dataclass
class OnnxModel:
    """A verified `.onnx` file of cxrlearn's, ready to run with onnxruntime.

    Attributes:
        metadata: Its description (`file_format` is `"onnx"`).
        props: All of its `metadata_props`, as written.
        session: An `onnxruntime.InferenceSession` built from the verified bytes.
    """

    metadata: ExportMetadata
    props: dict[str, str]
    session: Any

    def run(self, image: np.ndarray | Tensor) -> dict[str, np.ndarray]:
        """All outputs for one raw image or a batch; uint8 is divided by 255 first, as
        `load_image` does.

        Shape:
            image: (H, W) or (B, 1, H, W) -> probs (B, K), features, cams
        """
        x = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
        if x.dtype == np.uint8:
            x = (torch.from_numpy(x).to(torch.float32) / 255.0).numpy()  # torch's rounding
        x = x.astype(np.float32, copy=False)
        if x.ndim == 2:
            x = x[None, None]  # (1, 1, H, W)
        try:
            outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        except Exception as e:  # onnxruntime's own error types (e.g. an index out of bounds)
            raise CxrlearnError(f"onnxruntime failed on a {' x '.join(map(str, x.shape))} "
                                f"input ({_first_line(e)})") from None
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))

    def probs(self, image: np.ndarray | Tensor) -> Tensor:
        """Probabilities only, as a tensor (the runner `max_abs_diff` and `open_model` call).

        Shape:
            image: (H, W) or (B, 1, H, W) -> (B, K)
        """
        return torch.from_numpy(self.run(image)["probs"])


def _first_line(e: BaseException) -> str:
    """The line of an error that says what went wrong (the exporter's own summary, if any)."""
    text = str(e)
    if "## Exception summary" in text:  # torch.onnx's report: the cause follows this heading
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _graph_sha256(model: Any) -> str:
    """sha256 of the model without its metadata_props: the fingerprint stored inside them."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def _props(meta: ExportMetadata, quantized: str | None) -> dict[str, str]:
    """The metadata_props: cxrlearn.json whole, and its main fields one by one for any reader."""
    return {
        METADATA_NAME: meta.to_json(),
        "class_names": json.dumps(list(meta.class_names)),
        "preprocessing": json.dumps(meta.preprocess.to_dict()),
        "temperature": repr(meta.temperature),
        "weights_sha256": meta.weights_sha256,
        "cxrlearn_version": meta.cxrlearn_version,
        "warning": WARNING,
        "outputs": "probs (B, K); features (B, C, h, w): layer4; cams (B, K, h, w): "
                   "sum_c fc.weight[k, c] features[c] (Grad-CAM = ReLU, upsample, min-max)",
        "input": "image (B, 1, H, W) float32: grey levels in [0, 1] as load_image gives them "
                 "(8-bit files: k / 255); any H, W",
        "quantization": quantized or "none (float32)",
    }


def _with_props(model: Any, props: dict[str, str]) -> bytes:
    """Serialised model with `props` and the graph's sha256 in its metadata_props."""
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**props, GRAPH_SHA256: _graph_sha256(model)})
    return model.SerializeToString(deterministic=True)


def _export_float(pipeline: OnnxPipeline, path: Path) -> Any:
    """Trace the pipeline with `torch.onnx.export(dynamo=True)`; the ModelProto, weights inside.

    Batch, height and width are symbolic (`Dim`); the example is 2 x 300 x 280, a size the
    parity check never uses, so that a graph specialised to it would fail the check.
    """
    example = torch.rand(2, 1, *TRACE_SIZE, generator=torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            2: torch.export.Dim("height", min=2, max=16384),
            3: torch.export.Dim("width", min=2, max=16384)}
    # The exporter prints its progress and logs that torchvision's operators are not
    # registered; library code prints nothing (house style 9).
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                pipeline, (example,), dynamo=True, opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"image": dims}, verbose=False)
    except Exception as e:  # the exporter fails in many types; the user needs its first line
        raise CxrlearnError(f"torch.onnx.export could not capture the model ({_first_line(e)})",
                            path=path) from None
    finally:
        registry.setLevel(level)
    return program.model_proto


def _quantize(float_path: Path, out_path: Path, images: Sequence[np.ndarray]) -> None:
    """Static int8 quantization of the convolutions and the linear layer (QDQ format).

    Only Conv, Gemm and MatMul are quantized: the preprocessing (sort, percentiles, resize)
    stays float, exactly the graph the parity check proved. onnxruntime's own preparation
    runs first (shape inference, graph optimisation), as its documentation asks; activation
    ranges come from running the float file on `images` (MinMax calibration).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{INPUT_NAME: np.asarray(im, np.float32)[None, None]}
                             for im in images])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def export_onnx(
    network: nn.Module,
    path: str | Path,
    *,
    class_names: Sequence[str],
    preprocess: Preprocess,
    temperature: float = 1.0,
    check_images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
    quantize: str | None = None,
    calibration_images: Sequence[np.ndarray] = (),
) -> ExportResult:
    """Write the pipeline as one `.onnx` file, kept only if onnxruntime agrees with Python.

    Args:
        network: The eager classifier (a cxrlearn ResNet), any mode, any device.
        path: The file to write (`.onnx`).
        class_names: The class names, in the order of the network's outputs.
        preprocess: The preprocessing settings the network was trained with.
        temperature: T the logits are divided by.
        check_images: Grey float images for the parity check; default `onnx_check_images()`.
        atol: Largest accepted |p_onnx - p_python| (float files; int8 files: `INT8_ATOL`).
        quantize: None for float32, or `"int8"` (static quantization).
        calibration_images: `"int8"` only: grey training images to calibrate on.

    Raises:
        CxrlearnError: Not a `.onnx` path, no onnxruntime, a network that is not a ResNet,
            no calibration images for int8, or the file disagrees with the Python pipeline
            (then nothing is written).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise CxrlearnError("an ONNX file is saved as .onnx; change the suffix", path=path)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and not calibration_images:
        raise CxrlearnError("int8 quantization needs calibration images (training X-rays)",
                            path=path)
    _require_onnx()
    names, t = tuple(class_names), float(temperature)
    wrapper = EndToEndModel(network, preprocess, t)
    outputs = eager_probs(network, [np.zeros((8, 8), np.float32)], preprocess).shape[1]
    if outputs != len(names):
        raise CxrlearnError(f"the model has {outputs} outputs but there are {len(names)} "
                            f"class names {list(names)}", path=path)
    meta = ExportMetadata(
        file_format="onnx", class_names=names, preprocess=preprocess, temperature=t,
        weights_sha256=weights_sha256(wrapper.model.state_dict()), input_size=None,
        input_dtypes=("float32",), cxrlearn_version=cxrlearn.__version__,
        torch_version=torch.__version__)
    images = onnx_check_images() if check_images is None else list(check_images)
    proto = _export_float(OnnxPipeline(wrapper).eval(), path)
    with temporary_folder(path) as tmp_dir:
        tmp = tmp_dir / path.name
        tmp.write_bytes(_with_props(proto, _props(meta, None)))
        notes: list[str] = []
        if quantize == "int8":
            _quantize(tmp, tmp_dir / "int8.onnx", calibration_images)
            import onnx

            q = onnx.load(str(tmp_dir / "int8.onnx"))
            how = f"int8 static (QDQ), calibrated on {len(calibration_images)} training images"
            tmp.write_bytes(_with_props(q, _props(meta, how)))
            atol = max(atol, INT8_ATOL)
            notes.append(f"{how}; benchmarks/phone.py measures its test macro-F1 beside "
                         "the float model's")
        model = read_onnx(tmp)  # read back as any reader would: verified, then run
        try:
            worst, n = max_abs_diff(model.probs, network, preprocess, t, images)
        except CxrlearnError as e:
            raise CxrlearnError(f"the ONNX file fails on an image of a size never traced "
                                f"({e}); nothing was written", path=path) from None
        if not worst <= atol:
            raise CxrlearnError(
                f"the ONNX file disagrees with the Python pipeline (max |diff| = {worst:.3g} > "
                f"{atol:g} on {n} inputs of sizes never traced); nothing was written",
                path=path)
        os.replace(tmp, path)
    return ExportResult(path, model.metadata, worst, n, tuple(notes))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise CxrlearnError(f"ONNX needs the onnx extra ({e.name} is missing): "
                            "pip install 'cxrlearn[onnx]'") from None


def read_onnx(path: str | Path) -> OnnxModel:
    """Open a cxrlearn `.onnx` file: parse it as data, verify it, then hand it to onnxruntime.

    Refused, each with one line: a file that is not ONNX, that points to external data (its
    weights would come from other files, unverified), that lacks cxrlearn's metadata, whose
    graph does not hash to the sha256 inside (changed after export), or whose metadata is
    damaged. onnxruntime then runs the very bytes that were verified.

    Raises:
        CxrlearnError: As above, or the onnx extra is not installed.
    """
    _require_onnx()
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        if path.stat().st_size > MAX_ONNX_BYTES:
            raise CxrlearnError("too large for a cxrlearn ONNX file", path=path)
        data = path.read_bytes()
    except OSError as e:
        raise CxrlearnError(f"cannot read the file ({e.strerror or e})", path=path) from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise CxrlearnError("not an ONNX file (it does not parse)", path=path) from None
    external = [t.name for t in onnx.external_data_helper._get_all_tensors(model)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CxrlearnError(f"refers to external data files ({external[0]}, ...); cxrlearn "
                            "opens self-contained ONNX files only", path=path)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_NAME not in props or GRAPH_SHA256 not in props:
        raise CxrlearnError("an ONNX file without cxrlearn's metadata, so its classes and "
                            "preprocessing are unknown; export it with cxrlearn export",
                            path=path)
    if _graph_sha256(model) != props[GRAPH_SHA256]:
        raise CxrlearnError("the graph does not match the sha256 written at export time; the "
                            "file was changed after export, export it again", path=path)
    meta = _parse_metadata(props[METADATA_NAME], path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise CxrlearnError(f"onnxruntime cannot load it ({_first_line(e)})", path=path) from None
    return OnnxModel(meta, props, session)


def _parse_metadata(text: str, path: Path) -> ExportMetadata:
    """`cxrlearn.json` of an ONNX file: the fields `ExportMetadata` holds, checked."""
    try:
        doc = json.loads(text)
        if doc.get("file_format") != "onnx":
            raise ValueError(f"file_format {doc.get('file_format')!r:.40} is not 'onnx'")
        names = doc["class_names"]
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or not 2 <= len(names) <= 1000):
            raise ValueError(f"class_names must be 2 to 1000 names, got {names!r:.60}")
        temperature = float(doc["temperature"])
        if not plausible_temperature(temperature):
            raise ValueError(f"temperature {temperature} out of range")
        return ExportMetadata(
            file_format="onnx", class_names=tuple(names),
            preprocess=Preprocess.from_dict(doc), temperature=temperature,
            weights_sha256=str(doc["weights_sha256"]), input_size=None,
            input_dtypes=("float32",), cxrlearn_version=str(doc["cxrlearn_version"]),
            torch_version=str(doc["torch_version"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CxrlearnError(f"damaged cxrlearn.json in the ONNX metadata ({type(e).__name__}: "
                            f"{e}); export the model again", path=path) from None

