"""Lesson 06 (export): the resize a fixed-size program needs, a weights fingerprint, and
the whole preprocessing an exported file must carry.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, Mismatch, compare_arrays, show

__all__ = ["EXERCISES"]

RESIZE_HW = Exercise(
    id="06.resize_hw",
    signature="resize_hw(image, size) -> array",
    summary="Resize one grey float image (H0, W0) to size = (H, W) with the filter the "
            "network was trained with (bilinear, antialiased, align_corners=False); returns "
            "a float32 numpy array.",
    reference_path="cxrlearn.export.pipeline:resize_hw",
    cases=st.tuples(gen.grey_images(8), st.tuples(st.integers(1, 8), st.integers(1, 8))),
    edge_cases=[
        ("the same size", (np.linspace(0, 1, 9).reshape(3, 3), (3, 3))),
        ("halving a checkerboard", (np.indices((4, 4)).sum(axis=0) % 2 * 1.0, (2, 2))),
        ("upscaling", (np.array([[0.0, 1.0]]), (2, 4))),
        ("not square", (np.linspace(0, 1, 12).reshape(3, 4), (2, 3))),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-5),
    tolerance="1e-05 per pixel",
    hint_text="torch.nn.functional.interpolate works on (B, C, H, W): x = "
              "torch.as_tensor(image, dtype=torch.float32)[None, None]. Call it with "
              "size=tuple(size), mode='bilinear', align_corners=False, antialias=True (the "
              "antialias averages when shrinking, as in training), then out[0, 0].numpy().",
)


def _state(case: tuple) -> tuple:
    return ({name: torch.from_numpy(np.array(a)) for name, a in case[0]},)


def _describe_state(case: tuple) -> list[str]:
    items = ", ".join(f"{name!r}: {show(torch.from_numpy(np.array(a)))}" for name, a in case[0])
    return [f"state_dict = {{{items}}} (in this order)"]


_NAMES = ["fc.weight", "fc.bias", "bn1.running_mean", "conv1.weight", "bn1.num_batches_tracked"]


def _entry(name: str) -> st.SearchStrategy:
    if name.endswith("num_batches_tracked"):
        return st.integers(0, 100).map(lambda v: (name, np.array(v, dtype=np.int64)))
    shape = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3)
    return gen.float_arrays(shape, dtype=np.float32).map(lambda a: (name, a))


def _compare_hash(got: object, want: str) -> Mismatch | None:
    if not isinstance(got, str):
        return Mismatch("type", f"returned {type(got).__name__}, expected a str "
                                "(hashlib's .hexdigest())")
    if got != want:
        return Mismatch("value", "the digests differ")
    return None


WEIGHTS_SHA256 = Exercise(
    id="06.weights_sha256",
    signature="weights_sha256(state_dict) -> str",
    summary="A sha256 fingerprint of a model's weights: for each name in sorted order, "
            "hash f\"{name}|{dtype}|{shape}|\" then the tensor's raw bytes; hex digest.",
    reference_path="cxrlearn.export.pipeline:weights_sha256",
    cases=st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4, unique=True)
    .flatmap(lambda names: st.tuples(*[_entry(n) for n in names]))
    .map(lambda entries: (list(entries),)),
    build=_state,
    describe=_describe_state,
    edge_cases=[
        ("one tensor", ([("w", np.array([1.0], np.float32))],)),
        ("keys not in sorted order", ([("b", np.array([1.0], np.float32)),
                                       ("a", np.array([2.0], np.float32))],)),
        ("an int64 counter", ([("bn.num_batches_tracked", np.array(3, np.int64))],)),
    ],
    compare=lambda got, want, case: _compare_hash(got, want),
    hint_text="h = hashlib.sha256(); for name in sorted(state_dict): t = "
              "state_dict[name].detach().cpu().contiguous(); "
              "h.update(f\"{name}|{t.dtype}|{tuple(t.shape)}|\".encode()); "
              "h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes()). "
              "Sorted, so that the order of the dict does not change the hash; the names, "
              "dtypes and shapes too, so that the same bytes under another layout differ. "
              "Return h.hexdigest().",
)


def _end_to_end(case: tuple) -> tuple:
    from cxrlearn.export.pipeline import EndToEndModel
    from cxrlearn.transforms import Preprocess

    size, low, high, channels, image, as_uint8 = case
    module = EndToEndModel(nn.Identity(), Preprocess(image_size=size, low=low, high=high,
                                                     channels=channels))
    x = torch.from_numpy(np.array(image, dtype=np.float32))
    if as_uint8:
        x = (x * 255).round().to(torch.uint8)
    return module, x


def _describe_end_to_end(case: tuple) -> list[str]:
    size, low, high, channels, image, as_uint8 = case
    x = np.array(image, dtype=np.float32)
    x = (x * 255).round().astype(np.uint8) if as_uint8 else x
    return [f"module = EndToEndModel(net, Preprocess(image_size={size}, low={low:g}, "
            f"high={high:g}, channels={channels})), so module.mean = "
            f"{show(tuple(round(v, 3) for v in module_mean(channels)))}",
            f"image = {show(torch.from_numpy(x))}"]


def module_mean(channels: int) -> tuple[float, ...]:
    from cxrlearn.transforms import Preprocess

    return tuple(Preprocess(image_size=16, channels=channels).mean)


PREPROCESS = Exercise(
    id="06.preprocess",
    signature="preprocess(module, image) -> tensor",
    summary="An exported model's whole preprocessing, from the settings stored on an "
            "EndToEndModel: (H, W) grey image (uint8 or float) -> (1, C, S, S) network input: "
            "/255 for uint8, stretch, resize, 8-bit rounding, channels, normalisation.",
    reference_path="cxrlearn.export.pipeline:EndToEndModel.preprocess",
    cases=st.tuples(st.sampled_from([16, 24]), st.sampled_from([2.0, 0.0]),
                    st.sampled_from([98.0, 100.0]), st.sampled_from([3, 1]),
                    gen.grey_images(20), st.booleans()),
    build=_end_to_end,
    describe=_describe_end_to_end,
    edge_cases=[
        ("a float image", (16, 2.0, 98.0, 3, np.linspace(0, 1, 400).reshape(20, 20), False)),
        ("a uint8 image", (16, 2.0, 98.0, 3, np.linspace(0, 1, 400).reshape(20, 20), True)),
        ("one channel", (16, 2.0, 98.0, 1, np.linspace(0.2, 0.3, 64).reshape(8, 8), False)),
        ("a constant image", (16, 2.0, 98.0, 3, np.full((4, 4), 0.5), False)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-4, kind="tensor"),
    tolerance="1e-04 (an 8-bit step is about 0.017 after normalisation)",
    max_examples=25,
    hint_text="Follow EndToEndModel's docstring with the library's pieces: x = "
              "image[None, None] (uint8: .float() / 255); stretch_contrast_tensor(x, "
              "module.low, module.high) from cxrlearn.contrast; cxrlearn.transforms.resize(x, "
              "module.image_size); the 8-bit rounding (x * 255).round().clamp(0, 255) / 255 "
              "that the training images went through; x.expand(-1, module.channels, -1, -1); "
              "then (x - module.mean) / module.std.",
)

EXERCISES = [RESIZE_HW, WEIGHTS_SHA256, PREPROCESS]
