"""Flip averaging (test-time augmentation) in `cxrlearn.tta`, `predict` and the export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from cxrlearn.export import EndToEndModel, Preprocess, eager_probs, upstream_deprecation
from cxrlearn.training import predict
from cxrlearn.transforms import eval_transform, prepare
from cxrlearn.tta import flip_averaged_logits, mirror

pytestmark = pytest.mark.usefixtures("one_thread")


def _lopsided(seed: int = 0) -> torch.nn.Module:
    """A small network that is not left-right symmetric: its output depends on the side."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                               torch.nn.LazyLinear(4)).eval()


def test_mirror_reverses_the_width_axis_by_hand():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert mirror(x).tolist() == [[[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]]
    assert torch.equal(mirror(mirror(x)), x)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), h=st.integers(3, 9),
       w=st.integers(3, 9))
def test_flip_averaged_logits_do_not_change_when_the_image_is_mirrored(seed, batch, h, w):
    model = _lopsided(seed % 7)
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(x)  # LazyLinear takes its size from the first input
        plain, plain_mirrored = model(x), model(mirror(x))
        averaged = flip_averaged_logits(model, x)
        torch.testing.assert_close(averaged, (plain + plain_mirrored) / 2)
        torch.testing.assert_close(flip_averaged_logits(model, mirror(x)), averaged)


def test_the_plain_model_is_not_mirror_invariant():
    """Otherwise the invariance above would hold for any function and prove nothing."""
    model = _lopsided()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(model(x), model(mirror(x)), atol=1e-4)


def test_predict_averages_only_when_asked():
    model = _lopsided()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(x, torch.arange(5)), batch_size=2)
    with torch.no_grad():
        model(x)
        want_plain, want_avg = model(x), (model(x) + model(x.flip(-1))) / 2
    logits, y = predict(model, loader, torch.device("cpu"))
    torch.testing.assert_close(logits, want_plain)
    logits, y = predict(model, loader, torch.device("cpu"), flip_average=True)
    torch.testing.assert_close(logits, want_avg)
    assert y.tolist() == [0, 1, 2, 3, 4]


def _image(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(20, 230, (37, 29)) / 255).astype(np.float32)


def test_the_exported_pipeline_averages_like_the_python_one():
    from cxrlearn.resnet import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=4).eval()
    preprocess = Preprocess(32, flip_average=True)
    image = _image()
    # The oracle, written out: the network's input, then both views, then the mean.
    x = eval_transform(3)(prepare(image, 32).to(torch.float32) / 255.0)[None]
    with torch.no_grad():
        want = torch.softmax((net(x) + net(x.flip(-1))) / 2 / 1.5, dim=1)
        plain = torch.softmax(net(x) / 1.5, dim=1)
    assert not torch.allclose(want, plain, atol=1e-4)  # the average changes the answer
    torch.testing.assert_close(eager_probs(net, [image], preprocess, 1.5), want)
    wrapper = EndToEndModel(net, preprocess, temperature=1.5)
    with upstream_deprecation("`torch.jit.script`"):
        scripted = torch.jit.script(wrapper)
    for m in (wrapper, scripted):
        torch.testing.assert_close(m(torch.from_numpy(image)), want, atol=1e-6, rtol=1e-5)


def test_preprocess_reads_flip_average_and_defaults_to_off():
    assert Preprocess.from_dict({"image_size": 64}).flip_average is False  # older files
    p = Preprocess(64, flip_average=True)
    assert p.to_dict()["flip_average"] is True
    assert Preprocess.from_dict(p.to_dict()) == p
