"""Tests for cxrlearn.resnet and cxrlearn.transfer: torchvision's names and counts, shapes,
scripting, loading ImageNet weights, freezing.

torchvision is not installed, so its ResNet18 `state_dict()` keys and parameter counts are
written here as data (from torchvision 0.2x `resnet18()`), and the shapes are checked
against the convolution output formula out = floor((n + 2p - k) / s) + 1.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cxrlearn.errors import CxrlearnError
from cxrlearn.resnet import (
    BasicBlock,
    ResNet,
    conv1x1,
    conv3x3,
    resnet18,
    summary,
    summary_rows,
)
from cxrlearn.transfer import (
    RESNET18_IMAGENET_URL,
    freeze_backbone,
    load_imagenet_weights,
    replace_head,
    sum_rgb_weights,
    unfreeze,
)

# torchvision.models.resnet18().state_dict().keys(), in order: 122 keys, 20 of them
# `num_batches_tracked` buffers (one per batch norm).
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
]


def _out(n: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution or pooling window (PyTorch docs, Conv2d)."""
    return (n + 2 * p - k) // s + 1


def _pretrained_like(num_classes: int = 1000) -> ResNet:
    """A ResNet18 with fixed random weights and batch-norm statistics, in eval mode.

    Fresh batch norms have mean 0 and variance 1, which would hide mistakes in copying them.
    """
    model = resnet18(num_classes=num_classes)
    state = _random_state()
    if num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=False)
    return model.eval()


@functools.cache
def _random_state() -> dict[str, torch.Tensor]:
    # Built once per test session: constructing ResNet18 is the slow part of these tests.
    torch.manual_seed(0)
    model = resnet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model_eval() -> ResNet:
    torch.manual_seed(0)
    return resnet18(num_classes=4).eval()


# ---------------------------------------------------------------- names, counts, shapes


def test_state_dict_keys_match_torchvision_key_for_key() -> None:
    keys = list(resnet18().state_dict())
    assert len(TORCHVISION_RESNET18_KEYS) == 122
    assert keys == TORCHVISION_RESNET18_KEYS


def test_torchvision_format_state_dict_loads_strictly() -> None:
    source = _pretrained_like()
    target = resnet18()
    # A plain dict of tensors, as torch.save(torchvision_model.state_dict()) writes it.
    target.load_state_dict(dict(source.state_dict()), strict=True)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


@pytest.mark.parametrize(("num_classes", "expected"), [(1000, 11_689_512), (4, 11_178_564)])
def test_parameter_count_matches_torchvision(num_classes: int, expected: int) -> None:
    model = resnet18(num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_stage_parameter_counts_by_hand() -> None:
    def block(cin: int, cout: int, projection: bool) -> int:
        convs = 9 * cin * cout + 9 * cout * cout
        bns = 2 * 2 * cout
        return convs + bns + ((cin * cout + 2 * cout) if projection else 0)

    expected = {
        "stem": 7 * 7 * 3 * 64 + 2 * 64,
        "layer1": 2 * block(64, 64, False),
        "layer2": block(64, 128, True) + block(128, 128, False),
        "layer3": block(128, 256, True) + block(256, 256, False),
        "layer4": block(256, 512, True) + block(512, 512, False),
        "pool": 0,
        "fc": 512 * 4 + 4,
    }
    rows = summary_rows(resnet18(num_classes=4), (1, 3, 64, 64))
    assert {r.name: r.num_params for r in rows} == expected
    assert sum(expected.values()) == 11_178_564


@pytest.mark.parametrize(("size", "last_side"), [(64, 2), (128, 4), (224, 7), (299, 10)])
def test_output_and_stage_shapes(model_eval: ResNet, size: int, last_side: int) -> None:
    with torch.no_grad():
        logits = model_eval(torch.zeros(1, 3, size, size))
    assert logits.shape == (1, 4)

    n = _out(_out(size, 7, 2, 3), 3, 2, 1)  # conv1, then max-pool
    expected = [("stem", (1, 64, n, n)), ("layer1", (1, 64, n, n))]
    for name, width in [("layer2", 128), ("layer3", 256), ("layer4", 512)]:
        n = _out(n, 3, 2, 1)
        expected.append((name, (1, width, n, n)))
    assert n == last_side  # the sizes the ResNet docstring and lesson 02 quote
    expected += [("pool", (1, 512)), ("fc", (1, 4))]
    rows = summary_rows(model_eval, (1, 3, size, size))
    assert [(r.name, r.output_shape) for r in rows] == expected


def test_conv_helpers() -> None:
    c3, c1 = conv3x3(8, 16, stride=2), conv1x1(8, 16, stride=2)
    assert (c3.kernel_size, c3.padding, c3.stride, c3.bias) == ((3, 3), (1, 1), (2, 2), None)
    assert (c1.kernel_size, c1.padding, c1.stride, c1.bias) == ((1, 1), (0, 0), (2, 2), None)


# ---------------------------------------------------------------- the block


def test_identity_shortcut_when_shape_kept_projection_otherwise() -> None:
    assert BasicBlock(64, 64).downsample is None
    for cin, cout, stride in [(64, 128, 2), (64, 128, 1), (64, 64, 2)]:
        proj = BasicBlock(cin, cout, stride).downsample
        assert isinstance(proj, nn.Sequential)
        assert proj[0].kernel_size == (1, 1) and proj[0].stride == (stride, stride)
        assert isinstance(proj[1], nn.BatchNorm2d)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


@pytest.mark.parametrize(("cin", "cout", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_block_equals_residual_equation(cin: int, cout: int, stride: int) -> None:
    torch.manual_seed(0)
    block = BasicBlock(cin, cout, stride)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, cin, 9, 9)

    # y = ReLU(F(x) + W_s x), written with functional ops and batch norm by its formula.
    h = torch.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
    f = _bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
    if block.downsample is None:
        shortcut = x
    else:
        shortcut = _bn(F.conv2d(x, block.downsample[0].weight, stride=stride), block.downsample[1])
    expected = torch.relu(f + shortcut)

    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    cin=st.sampled_from([2, 4]),
    cout=st.sampled_from([2, 4]),
    stride=st.sampled_from([1, 2]),
)
def test_block_output_shape_property(h: int, w: int, cin: int, cout: int, stride: int) -> None:
    block = BasicBlock(cin, cout, stride).eval()
    with torch.no_grad():
        y = block(torch.randn(1, cin, h, w))
    assert y.shape == (1, cout, -(-h // stride), -(-w // stride))
    assert bool((y >= 0).all())  # the last step is a ReLU


def test_blocks_per_stage_builds_deeper_nets() -> None:
    model = ResNet((3, 4, 6, 3), num_classes=1000)  # ResNet34, 21,797,672 in torchvision
    assert sum(p.numel() for p in model.parameters()) == 21_797_672
    with pytest.raises(ValueError, match="4 numbers"):
        ResNet((2, 2, 2))


# ---------------------------------------------------------------- TorchScript


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    # torch.jit.script is deprecated in this torch and warns; the warning is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.jit.script(model)


def test_scripted_equals_eager_before_and_after_save() -> None:
    model = _pretrained_like(num_classes=4)
    scripted = _script(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(scripted(x), eager)

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, buffer)
            buffer.seek(0)
            loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(x), eager)


@pytest.mark.parametrize("frozen", [False, True])
def test_scripting_warns_of_nothing_but_its_own_deprecation(frozen: bool) -> None:
    # Lesson 06 scripts the network and nbval fails on any stray warning; `frozen_norms`, a
    # training detail, once made TorchScript warn about its type.
    model = resnet18(num_classes=4)
    if frozen:
        freeze_backbone(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.script(model)
    assert all("torch.jit.script` is deprecated" in str(w.message) for w in caught)


# ---------------------------------------------------------------- loading weights


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def test_load_local_file_same_classes(tmp_path: Path) -> None:
    source = _pretrained_like()
    path = _save(source, tmp_path / "weights.pth")
    target = resnet18().eval()

    report = load_imagenet_weights(target, path)

    assert report.skipped == () and report.adapted == ()
    assert list(report.loaded) == TORCHVISION_RESNET18_KEYS
    assert report.source == str(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_load_skips_fc_when_class_count_differs(tmp_path: Path) -> None:
    source = _pretrained_like(num_classes=1000)
    path = _save(source, tmp_path / "weights.pth")
    torch.manual_seed(3)
    target = resnet18(num_classes=4)
    fc_before = {k: v.clone() for k, v in target.fc.state_dict().items()}

    report = load_imagenet_weights(target, path)

    assert report.skipped == ("fc.weight", "fc.bias")
    assert "fc.weight" in str(report)
    assert len(report.loaded) == 120
    for key, value in target.fc.state_dict().items():
        torch.testing.assert_close(value, fc_before[key])
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(target.state_dict()[key], value)


def test_load_old_checkpoint_without_num_batches_tracked(tmp_path: Path) -> None:
    source = _pretrained_like()
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    target = resnet18()
    report = load_imagenet_weights(target, tmp_path / "old.pth")
    assert len(report.loaded) == 102
    torch.testing.assert_close(target.bn1.running_var, source.bn1.running_var)


def test_grey_model_with_summed_conv1_equals_rgb_model_on_repeated_grey(
    tmp_path: Path,
) -> None:
    rgb = _pretrained_like(num_classes=1000)
    path = _save(rgb, tmp_path / "weights.pth")
    grey = resnet18(num_classes=1000, in_channels=1).eval()

    report = load_imagenet_weights(grey, path)

    assert report.adapted == ("conv1.weight",)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


def test_sum_rgb_weights_is_pure_and_sums() -> None:
    w = torch.randn(4, 3, 3, 3)
    before = w.clone()
    out = sum_rgb_weights(w)
    torch.testing.assert_close(out[:, 0], w[:, 0] + w[:, 1] + w[:, 2])
    assert out.shape == (4, 1, 3, 3)
    torch.testing.assert_close(w, before)
    with pytest.raises(ValueError):
        sum_rgb_weights(torch.randn(4, 1, 3, 3))


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(CxrlearnError, match="no such file") as info:
        load_imagenet_weights(resnet18(), path)
    assert str(path) in str(info.value)


def test_truncated_file_names_it(tmp_path: Path) -> None:
    # Small is enough: cutting any torch.save zip loses its central directory.
    path = tmp_path / "full.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CxrlearnError, match="not a readable PyTorch checkpoint") as info:
        load_imagenet_weights(resnet18(), cut)
    assert info.value.path == str(cut)
    assert str(info.value).startswith(str(cut))


def test_not_a_checkpoint_names_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CxrlearnError, match="not a readable") as info:
        load_imagenet_weights(resnet18(), path)
    assert info.value.path == str(path)


def test_wrong_contents_name_the_file(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CxrlearnError, match="state dict"):
        load_imagenet_weights(resnet18(), tmp_path / "tensor.pth")

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CxrlearnError, match="not a checkpoint for this ResNet") as info:
        load_imagenet_weights(resnet18(), tmp_path / "other.pth")
    assert info.value.path == str(tmp_path / "other.pth")

    state = resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CxrlearnError, match="layer1.0.conv1.weight has shape"):
        load_imagenet_weights(resnet18(), tmp_path / "shape.pth")


def test_weights_only_refuses_pickled_code(tmp_path: Path) -> None:
    # A pickled arbitrary object (here a module) is refused by weights_only=True.
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CxrlearnError, match="holds pickled Python objects") as error:
        load_imagenet_weights(resnet18(), tmp_path / "module.pth")
    assert "weights_only=False" not in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- download from a URL


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve a folder on 127.0.0.1; yields (folder, base URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve_weights(root: Path, source: nn.Module, name_for_digest) -> str:
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    data = buffer.getvalue()
    name = name_for_digest(hashlib.sha256(data).hexdigest())
    (root / name).write_bytes(data)
    return name


def test_download_with_matching_hash_loads_and_caches(http_root, tmp_path: Path) -> None:
    root, base = http_root
    source = _pretrained_like(num_classes=1000)
    name = _serve_weights(root, source, lambda digest: f"resnet18-{digest[:8]}.pth")
    cache = tmp_path / "cache"
    target = resnet18(num_classes=4)

    report = load_imagenet_weights(target, f"{base}/{name}", model_dir=cache)

    assert (cache / name).is_file()
    assert report.skipped == ("fc.weight", "fc.bias")
    torch.testing.assert_close(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_download_goes_to_torch_hub_dir_by_default(http_root, tmp_path: Path) -> None:
    root, base = http_root
    source = _pretrained_like()
    name = _serve_weights(root, source, lambda digest: f"weights-{digest[:10]}.pth")
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        load_imagenet_weights(resnet18(), f"{base}/{name}")
    finally:
        torch.hub.set_dir(old_dir)
    assert (tmp_path / "hub" / "checkpoints" / name).is_file()
    assert torch.hub.get_dir() == old_dir


def test_download_with_wrong_hash_fails_and_keeps_nothing(http_root, tmp_path: Path) -> None:
    root, base = http_root
    name = "resnet18-0123abcd.pth"
    (root / name).write_bytes(b"not the file the name promises")
    cache = tmp_path / "cache"
    url = f"{base}/{name}"
    with pytest.raises(CxrlearnError, match="does not match the hash") as info:
        load_imagenet_weights(resnet18(), url, model_dir=cache)
    assert info.value.path == url
    assert not (cache / name).exists()


def test_download_without_hash_in_name_is_refused(http_root, tmp_path: Path) -> None:
    root, base = http_root
    name = "weights.pth"
    (root / name).write_bytes(b"never fetched")
    with pytest.raises(CxrlearnError, match="cannot be checked"):
        load_imagenet_weights(resnet18(), f"{base}/{name}", model_dir=tmp_path / "cache")


def test_download_missing_file_is_a_clear_error(http_root, tmp_path: Path) -> None:
    _, base = http_root
    url = f"{base}/resnet18-0123abcd.pth"
    with pytest.raises(CxrlearnError, match="could not download") as info:
        load_imagenet_weights(resnet18(), url, model_dir=tmp_path / "cache")
    assert info.value.path == url


def test_default_source_is_torchvision_file_with_hash_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []
    source = _pretrained_like()

    def fake_load_state_dict_from_url(url: str, **kwargs: object) -> dict:
        calls.append((url, kwargs))
        return source.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load_state_dict_from_url)
    report = load_imagenet_weights(resnet18(), model_dir=tmp_path)

    assert RESNET18_IMAGENET_URL == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    [(url, kwargs)] = calls
    assert url == RESNET18_IMAGENET_URL and report.source == RESNET18_IMAGENET_URL
    assert kwargs["check_hash"] is True and kwargs["weights_only"] is True


# ---------------------------------------------------------------- head and freezing


def test_replace_head() -> None:
    model = _pretrained_like(num_classes=1000)
    conv_before = model.layer1[0].conv1.weight
    assert replace_head(model, 7) is model
    assert (model.fc.in_features, model.fc.out_features) == (512, 7)
    assert model.layer1[0].conv1.weight is conv_before
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 7)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def _train_step(model: nn.Module) -> None:
    model.train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()


def test_unfrozen_training_changes_bn_statistics() -> None:
    # The control for the next test: without freezing, a train-mode pass moves the stats.
    model = _pretrained_like(num_classes=4)
    before = _bn_stats(model)
    _train_step(model)
    after = _bn_stats(model)
    assert all(not torch.equal(after[k], before[k]) for k in before)


def test_frozen_backbone_keeps_bn_statistics_and_trains_fc() -> None:
    model = _pretrained_like(num_classes=4)
    trainable = freeze_backbone(model)
    assert trainable == ["fc.weight", "fc.bias"]
    before = _bn_stats(model)

    _train_step(model)

    assert model.training
    after = _bn_stats(model)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.fc.weight.grad is not None and model.fc.bias.grad is not None
    assert float(model.fc.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))


def test_partially_frozen_keeps_trainable_bn_in_train_mode() -> None:
    model = _pretrained_like(num_classes=4)
    trainable = freeze_backbone(model, trainable=("layer4", "fc"))
    assert all(n.startswith(("layer4.", "fc.")) for n in trainable)
    before = _bn_stats(model)

    _train_step(model)

    after = _bn_stats(model)
    for key in before:
        changed = not torch.equal(after[key], before[key])
        assert changed == key.startswith("layer4."), key
    assert model.layer4[0].bn1.training and not model.layer3[1].bn2.training
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.frozen_norms == [n for n in norms if not n.startswith("layer4.")]
    assert model.layer4[0].conv1.weight.grad is not None
    assert model.layer3[0].conv1.weight.grad is None


def test_unfreeze_restores_everything() -> None:
    model = _pretrained_like(num_classes=4)
    freeze_backbone(model)
    model.train()
    assert unfreeze(model) is model
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_only_freeze_backbone_keeps_batch_norms_in_eval_mode() -> None:
    # Gradients turned off by hand (an averaged copy of the weights, say) freeze nothing:
    # the batch norms follow `model.train()`, so precise BN can measure their statistics.
    model = resnet18(num_classes=4).requires_grad_(False)
    model.train()
    assert all(m.training for m in model.modules())
    assert model.frozen_norms == []
    freeze_backbone(model)  # what it froze is written down, and a copy keeps the record
    copied = copy.deepcopy(model).train()
    assert "bn1" in copied.frozen_norms and "layer4.1.bn2" in copied.frozen_norms
    assert not copied.bn1.training and not copied.layer4[1].bn2.training
    assert copied.layer4[1].conv2.training and copied.fc.training


def test_freeze_rejects_unknown_names() -> None:
    with pytest.raises(CxrlearnError, match="'fcc'"):
        freeze_backbone(resnet18(), trainable=("fcc",))


# ---------------------------------------------------------------- summary


def test_summary_rows_leave_model_untouched() -> None:
    model = _pretrained_like(num_classes=4).train()
    before = _bn_stats(model)
    rows = summary_rows(model, (2, 3, 64, 64))
    assert model.training and all(m.training for m in model.modules())
    for key, value in _bn_stats(model).items():
        assert torch.equal(value, before[key]), key
    assert sum(r.num_params for r in rows) == 11_178_564


def test_summary_table_text() -> None:
    model = resnet18(num_classes=4)
    freeze_backbone(model)
    text = summary(model, (1, 3, 224, 224))
    assert isinstance(text, str)
    title, header, *rest = text.splitlines()
    assert title == "ResNet, input (1, 3, 224, 224)"
    assert header.split() == ["stage", "output", "shape", "params", "trainable"]
    lines = {line.split()[0]: line for line in rest if not line.startswith("-")}
    assert "(1, 512, 7, 7)" in lines["layer4"] and "8,393,728" in lines["layer4"]
    assert lines["total"].split() == ["total", "11,178,564", "2,052"]
    assert list(lines) == ["stem", "layer1", "layer2", "layer3", "layer4", "pool", "fc", "total"]
    # Columns line up: every number ends where its header ends (right-aligned).
    for name in ("params", "trainable"):
        end = header.index(name) + len(name)
        assert all(line[end - 1].isdigit() for line in lines.values())
    assert "\x1b" not in text  # plain text: no colour codes


def test_unreadable_cached_download_names_the_cache(http_root, tmp_path: Path) -> None:
    _, base = http_root
    cache = tmp_path / "cache"
    cache.mkdir()
    name = "resnet18-0123abcd.pth"
    (cache / name).write_text("a damaged file left in the cache")  # no download happens
    with pytest.raises(CxrlearnError, match="delete it and try again") as info:
        load_imagenet_weights(resnet18(), f"{base}/{name}", model_dir=cache)
    assert str(cache / name) in str(info.value)
