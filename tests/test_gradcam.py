"""Tests for cxrlearn.gradcam: the map against autograd, hooks, batches, a sanity check."""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator
from typing import NamedTuple

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from torch import Tensor, nn

from cxrlearn.errors import CxrlearnError
from cxrlearn.gradcam import CamResult, GradCAM, gradcam_from, minmax_normalise
from cxrlearn.heatmap import DEFAULT_CMAP, gradcam_figure, overlay

NUM_CLASSES = 4
SIZE = 32  # toy images are SIZE x SIZE; the target layer's map is 8 x 8


class TinyNet(nn.Module):
    """A small CNN with a ResNet-like `layer4` and an in-place ReLU after its last layer.

    That in-place ReLU is what breaks `register_full_backward_hook` (pytorch issue 61519)
    and overwrites the target layer's output after the forward hook has seen it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)  # (B, 8, 16, 16)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer4 = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # (B, 16, 8, 8)
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),  # (B, 16, 8, 8), the target layer
        )
        self.relu_after = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def head(self, acts: Tensor) -> Tensor:
        # Out of place on purpose: the oracle below needs `acts` unchanged.
        return self.fc(torch.flatten(self.avgpool(F.relu(acts)), 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.stem(x))
        x = self.relu_after(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


PATCH = 8  # side of the bright patches in the toy images
QUADRANT = SIZE // 2
# The toy task. Each image holds two bright PATCH x PATCH patches on dark noise, in two
# different quadrants: a striped one whose stripes give the class, and a solid decoy that
# every image has. A map that means something lands on the striped patch, not the decoy.
_i = torch.arange(PATCH)
TEXTURES = torch.stack(
    [
        (_i % 2 == 0).float()[:, None].expand(PATCH, PATCH),  # 0: rows
        (_i % 2 == 0).float()[None, :].expand(PATCH, PATCH),  # 1: columns
        ((_i[:, None] + _i) % 2 == 0).float(),  # 2: checks
        ((_i[:, None] + _i) % 4 < 2).float(),  # 3: diagonal bands
    ]
)


class Toy(NamedTuple):
    """The trained toy model and 16 test images, 4 of each class."""

    model: TinyNet
    x: Tensor  # (16, 1, SIZE, SIZE)
    y: Tensor  # (16,)
    masks: Tensor  # (16, SIZE, SIZE): 1 on the striped patch
    decoys: Tensor  # (16, SIZE, SIZE): 1 on the solid decoy


def toy_images(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Toy images (N, 1, SIZE, SIZE), and masks (N, SIZE, SIZE) of the patch and decoy."""
    n = len(labels)
    x = 0.1 * torch.rand(n, 1, SIZE, SIZE, generator=generator)
    masks, decoys = torch.zeros(n, SIZE, SIZE), torch.zeros(n, SIZE, SIZE)
    for i, label in enumerate(labels.tolist()):
        quadrants = torch.randperm(4, generator=generator)[:2].tolist()
        offsets = torch.randint(0, QUADRANT - PATCH + 1, (4,), generator=generator).tolist()
        for k, (mask, pattern) in enumerate([(masks, TEXTURES[label]), (decoys, 1.0)]):
            top = (quadrants[k] // 2) * QUADRANT + offsets[2 * k]
            left = (quadrants[k] % 2) * QUADRANT + offsets[2 * k + 1]
            x[i, 0, top : top + PATCH, left : left + PATCH] = pattern
            mask[i, top : top + PATCH, left : left + PATCH] = 1.0
    return x, masks, decoys


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models run faster on one thread than on a few shared ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(one_thread: None) -> Toy:
    """A TinyNet trained for a few seeded steps on the toy task (about 4 s on one core)."""
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        y = torch.randint(0, NUM_CLASSES, (32,), generator=generator)
        x, _, _ = toy_images(y, generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    y = torch.arange(16) % NUM_CLASSES
    x, masks, decoys = toy_images(y, generator)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy == 1.0, "the toy model should have learned the toy task"
    return Toy(model, x, y, masks, decoys)


def copy_of(toy: Toy) -> TinyNet:
    """A copy of the trained model, for tests that change the model's flags or mode."""
    return copy.deepcopy(toy.model)


def fresh_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def hooks_on(module: nn.Module) -> int:
    """How many hooks of any kind are registered on the module itself."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(module, name)) for name in names)


def cam_by_autograd(model: TinyNet, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Grad-CAM without hooks: run the pieces by hand and ask autograd for d y / d A."""
    model.eval()
    acts = model.layer4(model.stem(x))  # (B, 16, 8, 8)
    logits = model.head(acts)
    scores = logits[torch.arange(len(x)), targets]
    (grads,) = torch.autograd.grad(scores.sum(), acts)
    # The Grad-CAM formula, written out channel by channel.
    raw = torch.zeros(acts.shape[0], *acts.shape[2:])
    for c in range(acts.shape[1]):
        raw += grads[:, c].mean(dim=(1, 2))[:, None, None] * acts[:, c].detach()
    raw = raw.clamp(min=0)
    up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    cams = []
    for m in up[:, 0]:
        span = m.max() - m.min()
        cams.append((m - m.min()) / span if span > 0 else torch.zeros_like(m))
    return torch.stack(cams), raw


# --- the formula --------------------------------------------------------------------


def test_gradcam_from_by_hand() -> None:
    # Two channels of 2 x 2. Channel weights are the gradient means: 1 and -0.5.
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [2.0, 2.0]]]])
    grads = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-2.0, 0.0], [0.0, 0.0]]]])
    # 1 * [[1, 2], [3, 4]] - 0.5 * [[4, 0], [2, 2]] = [[-1, 2], [2, 3]] -> ReLU
    expected = torch.tensor([[[0.0, 2.0], [2.0, 3.0]]])
    acts_before, grads_before = acts.clone(), grads.clone()
    torch.testing.assert_close(gradcam_from(acts, grads), expected)
    torch.testing.assert_close(acts, acts_before)  # pure: inputs left alone
    torch.testing.assert_close(grads, grads_before)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 10.0))
def test_gradcam_from_properties(seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    acts = torch.randn(2, 3, 4, 5, generator=generator)
    grads = torch.randn(2, 3, 4, 5, generator=generator)
    cam = gradcam_from(acts, grads)
    assert cam.shape == (2, 4, 5)
    assert (cam >= 0).all()
    # Linear in the activations before the ReLU, so positive scaling carries through.
    torch.testing.assert_close(gradcam_from(scale * acts, grads), scale * cam)
    # Each image uses its own gradients only.
    torch.testing.assert_close(gradcam_from(acts[1:], grads[1:]), cam[1:])


def test_gradcam_from_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        gradcam_from(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_minmax_all_zero_map_stays_zero() -> None:
    cam = torch.zeros(2, 5, 5)
    cam[1, 2, 3] = 4.0
    out = minmax_normalise(cam)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[0], torch.zeros(5, 5))
    torch.testing.assert_close(out[1], cam[1] / 4.0)
    torch.testing.assert_close(minmax_normalise(torch.full((1, 3, 3), 2.0)), torch.zeros(1, 3, 3))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_minmax_properties(seed: int) -> None:
    cam = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(seed)) * 5 - 1
    out = minmax_normalise(cam)
    assert out.amin(dim=(1, 2)).tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(out.amax(dim=(1, 2)), torch.ones(3))
    # An increasing affine change of one map does not change its normalised version.
    torch.testing.assert_close(minmax_normalise(3 * cam + 7), out)


# --- GradCAM against autograd ------------------------------------------------------


def test_map_equals_autograd_oracle(toy: Toy) -> None:
    model, x, y = toy.model, toy.x, toy.y
    x = x[:4]
    targets = (y[:4] + torch.tensor([0, 1, 2, 0])) % NUM_CLASSES  # true and other classes
    with GradCAM(model) as cam:
        result = cam(x, targets)
    expected_cams, expected_raw = cam_by_autograd(model, x, targets)
    # Maps worth normalising (an all-zero one among them must stay zero, not NaN).
    assert (expected_raw.amax(dim=(1, 2)) > 0).sum() >= 2
    assert isinstance(result, CamResult)
    assert result.cams.shape == (4, SIZE, SIZE)
    assert result.raw.shape == (4, 8, 8)
    torch.testing.assert_close(result.raw, expected_raw)
    torch.testing.assert_close(result.cams, expected_cams)
    logits = model(x).detach()
    torch.testing.assert_close(result.scores, logits[torch.arange(4), targets])
    torch.testing.assert_close(result.probs, logits.softmax(dim=1))
    assert result.targets.tolist() == targets.tolist()


def test_default_target_is_the_predicted_class(toy: Toy) -> None:
    model, x = toy.model, toy.x
    predicted = model(x).argmax(dim=1)
    with GradCAM(model) as cam:
        result = cam(x)
    assert result.targets.tolist() == predicted.tolist()
    torch.testing.assert_close(result.raw, cam_by_autograd(model, x, predicted)[1])


def test_explicit_target_layer(toy: Toy) -> None:
    model, x, y = toy.model, toy.x, toy.y
    x, targets = x[:4], y[:4]
    # The earlier layer4[0] as target: its activations, by hand.
    acts = model.layer4[0](model.stem(x))  # (B, 16, 8, 8)
    logits = model.head(model.layer4[2](model.layer4[1](acts)))
    (grads,) = torch.autograd.grad(logits[torch.arange(4), targets].sum(), acts)
    expected = gradcam_from(acts.detach(), grads)
    assert expected.sum() > 0
    with GradCAM(model, target_layer=model.layer4[0]) as cam:
        result = cam(x, targets)
    torch.testing.assert_close(result.raw, expected)


def test_backward_module_hooks_fail_where_gradcam_works(toy: Toy) -> None:
    # The reason the module uses a forward hook plus a tensor hook (pytorch issue 61519):
    # the in-place ReLU after the target layer breaks a full backward hook in the forward.
    model, x, y = toy.model, toy.x, toy.y
    handle = model.layer4[-1].register_full_backward_hook(lambda *args: None)
    try:
        with pytest.raises(RuntimeError, match="inplace"):
            model(x[:1].clone().requires_grad_(True))
    finally:
        handle.remove()
    with GradCAM(model) as cam:
        result = cam(x[:2], y[:2])
    expected = cam_by_autograd(model, x[:2], y[:2])[1]
    assert expected.sum() > 0
    torch.testing.assert_close(result.raw, expected)


def test_activations_are_taken_before_the_inplace_relu(toy: Toy) -> None:
    # The in-place ReLU after the target layer overwrites its output A with ReLU(A); the
    # forward hook keeps a copy. Here the two choices give different maps, and GradCAM
    # gives the one of A.
    model, x, y = toy.model, toy.x, toy.y
    x, targets = x[:4], y[:4]
    acts = model.layer4(model.stem(x))  # (B, 16, 8, 8), before the ReLU
    logits = model.head(acts)
    (grads,) = torch.autograd.grad(logits[torch.arange(4), targets].sum(), acts)
    acts = acts.detach()
    assert (acts < 0).any()
    right, wrong = gradcam_from(acts, grads), gradcam_from(acts.relu(), grads)
    assert (right - wrong).abs().max() > 1e-3
    with GradCAM(model) as cam:
        torch.testing.assert_close(cam(x, targets).raw, right)


# --- batches and targets ----------------------------------------------------------


def test_per_image_targets(toy: Toy) -> None:
    model, x, y = toy.model, toy.x, toy.y
    image = x[:1].repeat(2, 1, 1, 1)  # the same image twice
    other = (int(y[0]) + 2) % NUM_CLASSES
    with GradCAM(model) as cam:
        result = cam(image, [int(y[0]), other])
        alone = cam(image[:1], [other])
    assert result.targets.tolist() == [int(y[0]), other]
    assert (result.raw.amax(dim=(1, 2)) > 0).all()
    assert (result.cams[0] - result.cams[1]).abs().max() > 0.1
    torch.testing.assert_close(result.cams[1], alone.cams[0])  # the second image explained


def test_batch_equals_per_image(toy: Toy) -> None:
    model = copy_of(toy)
    x, y = toy.x, toy.y
    x, targets = x[:6], (y[:6] + torch.tensor([0, 1, 0, 2, 0, 3])) % NUM_CLASSES
    # In train mode batch norm would mix the images; Grad-CAM must use eval mode.
    model.train()
    with GradCAM(model) as cam:
        batch = cam(x, targets)
        singles = [cam(x[i : i + 1], targets[i : i + 1]) for i in range(6)]
    for field in ("cams", "raw", "scores", "targets", "probs"):
        stacked = torch.cat([getattr(single, field) for single in singles])
        torch.testing.assert_close(getattr(batch, field), stacked, atol=1e-5, rtol=1e-4)


def test_int_target_applies_to_every_image(toy: Toy) -> None:
    model, x = toy.model, toy.x
    with GradCAM(model) as cam:
        every = cam(x[:3], 2)
        listed = cam(x[:3], [2, 2, 2])
    assert every.targets.tolist() == [2, 2, 2]
    torch.testing.assert_close(every.raw, listed.raw)
    torch.testing.assert_close(every.raw, cam_by_autograd(model, x[:3], every.targets)[1])


@pytest.mark.parametrize(
    ("targets", "message"),
    [([0, 1], "2 targets for 3 images"), ([0, 1, 4], "0..3"), ([-1, 0, 0], "0..3")],
)
def test_bad_targets_raise(targets: list[int], message: str) -> None:
    model = fresh_model()
    with GradCAM(model) as cam, pytest.raises(CxrlearnError, match=message):
        cam(torch.rand(3, 1, SIZE, SIZE), targets)


# --- the model is left as it was ------------------------------------------------------


def test_mode_requires_grad_and_grads_restored(toy: Toy) -> None:
    model = copy_of(toy)
    model.train()
    model.bn1.eval()  # a mixed state, as after freezing batch norms
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    x = toy.x[:2].clone()
    with GradCAM(model) as cam:
        cam(x, [0, 1])
    assert not x.requires_grad  # the caller's batch is left alone too
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    # No gradient was accumulated into the parameters.
    torch.testing.assert_close(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "fc.weight")


def test_fully_frozen_model_and_outer_no_grad(toy: Toy) -> None:
    model = copy_of(toy)
    for p in model.parameters():
        p.requires_grad_(False)
    x, targets = toy.x[:2], toy.y[:2]
    with GradCAM(model) as cam, torch.no_grad():
        result = cam(x, targets)
    assert not any(p.requires_grad for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    torch.testing.assert_close(result.raw, cam_by_autograd(model, x, targets)[1])
    assert result.raw.abs().sum() > 0


def test_inference_mode_is_refused() -> None:
    model = fresh_model()
    with GradCAM(model) as cam, torch.inference_mode(), pytest.raises(CxrlearnError):
        cam(torch.rand(1, 1, SIZE, SIZE))


# --- hooks and memory ---------------------------------------------------------------


def test_no_hook_left_after_exit() -> None:
    model = fresh_model()
    with GradCAM(model) as cam:
        assert hooks_on(model.layer4[-1]) == 1  # the check below can see a hook
        cam(torch.rand(2, 1, SIZE, SIZE))
    assert all(hooks_on(m) == 0 for m in model.modules())


def test_no_hook_left_after_exception() -> None:
    model = fresh_model()
    with pytest.raises(ZeroDivisionError), GradCAM(model):
        assert hooks_on(model.layer4[-1]) == 1
        _ = 1 / 0
    assert all(hooks_on(m) == 0 for m in model.modules())
    # Nor after a failure inside the call itself.
    with pytest.raises(CxrlearnError), GradCAM(model) as cam:
        cam(torch.rand(2, 1, SIZE, SIZE), [0, 9])
    assert all(hooks_on(m) == 0 for m in model.modules())
    assert model.training is False


def test_call_outside_with_block_raises() -> None:
    with pytest.raises(CxrlearnError, match="with"):
        GradCAM(fresh_model())(torch.rand(1, 1, SIZE, SIZE))


def test_model_without_layer4_needs_a_target_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    with pytest.raises(CxrlearnError, match="target_layer"):
        GradCAM(model)
    with GradCAM(model, target_layer=model[0]) as cam:
        assert cam(torch.rand(1, 1, 8, 8)).cams.shape == (1, 8, 8)


def test_plain_forward_inside_block_keeps_nothing() -> None:
    model = fresh_model()
    with GradCAM(model) as cam, torch.no_grad():
        model(torch.rand(2, 1, SIZE, SIZE))
        assert cam._acts == [] and cam._grads == []


def count_tensors() -> int:
    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which warns on some of torch's
    # deprecated module-level objects.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), Tensor))


def test_memory_does_not_grow_over_50_calls() -> None:
    model = fresh_model()
    x = torch.rand(2, 1, SIZE, SIZE)
    with GradCAM(model) as cam:
        for _ in range(3):  # warm-up: lazily created state settles
            cam(x)
        before = count_tensors()
        for _ in range(50):
            cam(x)
        after = count_tensors()
        # The object holds no tensors between calls.
        assert not any(isinstance(v, Tensor) for v in vars(cam).values())
        assert cam._acts == [] and cam._grads == []
    assert after <= before


# --- the sanity check of Adebayo et al. 2018 ----------------------------------------


def mass_on(cams: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's total that lies on the mask. Shape: (B, H, W) x 2 -> (B,)."""
    return (cams * masks).sum(dim=(1, 2)) / cams.sum(dim=(1, 2)).clamp(min=1e-12)


def test_trained_map_finds_the_patch(toy: Toy) -> None:
    with GradCAM(toy.model) as cam:
        cams = cam(toy.x, toy.y).cams  # (16, H, W)
    chance = PATCH**2 / SIZE**2  # 1/16: a patch's share of the image
    on_patch, on_decoy = mass_on(cams, toy.masks), mass_on(cams, toy.decoys)
    assert on_patch.mean() > 3 * chance
    assert on_patch.mean() > 3 * on_decoy.mean()


def pearson(a: Tensor, b: Tensor) -> float:
    """Correlation of two maps; 0 if one is flat (an all-zero map shares no pattern)."""
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    norms = a.norm() * b.norm()
    return 0.0 if norms == 0 else float((a * b).sum() / norms)


def test_randomised_target_block_changes_the_map(toy: Toy) -> None:
    # Adebayo et al. 2018: a map that survives re-initialising the layer it explains
    # shows the image, not what the model learned. Three seeded re-initialisations.
    with GradCAM(toy.model) as cam:
        before = cam(toy.x, toy.y).cams
        again = cam(toy.x, toy.y).cams
    # The same weights give the same maps, so the comparison below can fail.
    assert min(pearson(before[i], again[i]) for i in range(len(toy.x))) > 0.999
    for seed in (1, 2, 3):
        randomised = copy_of(toy)
        torch.manual_seed(seed)
        randomised.layer4[-1].reset_parameters()
        with GradCAM(randomised) as cam:
            after = cam(toy.x, toy.y).cams
        correlations = [pearson(before[i], after[i]) for i in range(len(toy.x))]
        assert float(np.median(correlations)) < 0.5
        # The randomised maps no longer single out the striped patch.
        assert mass_on(after, toy.masks).mean() < 0.6 * mass_on(before, toy.masks).mean()


def test_project_resnet18_frozen_backbone() -> None:
    # The default target layer on the project's own network, with a frozen backbone (only
    # `fc` trainable), in train mode: frozen batch norms must stay in eval mode afterwards.
    from cxrlearn.resnet import resnet18
    from cxrlearn.transfer import freeze_backbone

    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    freeze_backbone(model)
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 3])
    with GradCAM(model) as cam:
        result = cam(x, targets)
    assert result.cams.shape == (2, 64, 64) and result.raw.shape == (2, 2, 2)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(hooks_on(m) == 0 for m in model.modules())
    # The oracle: run the stages by hand, in eval mode, and ask autograd.
    model.eval()
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    h = model.layer4[0](model.layer3(model.layer2(model.layer1(h))))
    acts = model.layer4[1](h.detach().requires_grad_(True))  # (2, 512, 2, 2)
    logits = model.fc(torch.flatten(model.avgpool(acts), 1))
    (grads,) = torch.autograd.grad(logits[torch.arange(2), targets].sum(), acts)
    expected = gradcam_from(acts.detach(), grads)
    assert expected.sum() > 0
    torch.testing.assert_close(result.raw, expected)
    torch.testing.assert_close(result.scores, logits.detach()[torch.arange(2), targets])


# --- overlay and figure -------------------------------------------------------------


def test_overlay_alpha_zero_is_the_grey_image() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    cam = rng.random((12, 10))
    out = overlay(grey, cam, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    # Float images in [0, 1] give the same grey levels.
    out_float = overlay(grey / 255.0, cam, alpha=0.0)
    np.testing.assert_array_equal(out_float, out)


def test_overlay_alpha_one_is_the_colour_map() -> None:
    rng = np.random.default_rng(1)
    cam = rng.random((8, 8))
    out = overlay(torch.rand(8, 8), torch.from_numpy(cam), alpha=1.0, cmap="viridis")
    expected = np.round(matplotlib.colormaps["viridis"](cam)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_overlay_mixes_by_alpha() -> None:
    grey = np.full((4, 4), 0.5)
    cam = np.zeros((4, 4))
    colour = np.array(matplotlib.colormaps[DEFAULT_CMAP](0.0)[:3])
    out = overlay(grey, cam, alpha=0.25)
    np.testing.assert_array_equal(out[0, 0], np.round((0.75 * 0.5 + 0.25 * colour) * 255))


def test_overlay_resizes_the_map() -> None:
    grey = np.linspace(0, 1, 16 * 20).reshape(16, 20)
    small = overlay(grey, np.full((4, 5), 0.7), alpha=0.5)
    full = overlay(grey, np.full((16, 20), 0.7), alpha=0.5)
    assert small.shape == (16, 20, 3)
    np.testing.assert_array_equal(small, full)


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(CxrlearnError, match="alpha"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(CxrlearnError, match="2-D"):
        overlay(np.zeros((4, 4, 3)), np.zeros((4, 4)))
    with pytest.raises(CxrlearnError, match="before normalisation"):
        overlay(np.full((4, 4), -0.5), np.zeros((4, 4)))
    with pytest.raises(CxrlearnError, match="not .raw"):
        overlay(np.zeros((4, 4)), np.full((4, 4), 2.0))


def test_gradcam_figure() -> None:
    rng = np.random.default_rng(2)
    image, cam = rng.random((16, 16)), rng.random((4, 4))
    fig = gradcam_figure(image, cam, "COVID", prob=0.8765)
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "COVID (p = 0.88)"
    axes = fig.get_axes()
    assert len(axes) == 4  # three panels and the colour bar
    np.testing.assert_array_equal(axes[0].images[0].get_array(), image)
    np.testing.assert_array_equal(axes[1].images[0].get_array(), cam)
    np.testing.assert_array_equal(axes[2].images[0].get_array(), overlay(image, cam))
    assert gradcam_figure(image, cam, "Normal").get_suptitle() == "Normal"
