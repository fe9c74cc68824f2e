"""The exercises' checkers (`cxrlearn.exercises`), tested as hard as the library.

For every exercise: the library's reference passes, and plausible wrong answers (the
mistakes students make: min/max instead of percentiles, no clipping, micro instead of macro,
Wald instead of Wilson, no ReLU in Grad-CAM, contiguous shards, a step that never zeroes the
gradients...) fail with the words a student should read. A wrong answer that slips through
fails here. Then the verdicts themselves: one line for a crash, a wrong type, a timeout or a
stub; the same message on every run. Last, the small references added for the exercises,
each against the real thing (DistributedSampler, autograd, the full-batch gradient...).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrlearn.exercises import EXERCISES, FAILED, PASSED, UNSOLVED, core

REQUIRED = {
    "01.stretch": "stretch(image, low=2.0, high=98.0) -> image",
    "04.macro_f1": "macro_f1(y_true, y_pred, num_classes) -> float",
    "04.wilson_interval": "wilson_interval(successes, n, z=1.96) -> (low, high)",
    "05.gradcam_map": "gradcam_map(activations, gradients) -> map",
    "08.shard_indices": "shard_indices(n, rank, world_size) -> list[int]",
}


def reference(exercise_id: str):
    e = EXERCISES[exercise_id]
    return functools.partial(e.reference, **e.reference_kwargs)


# ---------------------------------------------------------------------------------------
# Wrong answers, by exercise: (function, a phrase the student must read)


def stretch_minmax(image, low=2.0, high=98.0):
    lo, hi = image.min(), image.max()
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def stretch_unclipped(image, low=2.0, high=98.0):
    lo, hi = np.percentile(image, (low, high))
    return (image - lo) / (hi - lo) if hi > lo else (image > lo) * 1.0


def stretch_nan_on_constant(image, low=2.0, high=98.0):
    lo, hi = np.percentile(image, (low, high))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((image - lo) / (hi - lo), 0, 1)


def percentile_nearest(x, q):
    values, _ = torch.sort(x, dim=1)
    return values[:, round(q / 100 * (x.shape[1] - 1))]


def percentile_n_not_n_minus_1(x, q):
    values, _ = torch.sort(x, dim=1)
    pos = q / 100 * x.shape[1]
    lo = int(pos)
    hi = min(lo + 1, x.shape[1] - 1)
    return values[:, lo] + (values[:, hi] - values[:, lo]) * (pos - lo)


def groups_direct_only(n, pairs):
    group = list(range(n))
    for i, j, _ in pairs:
        group[j] = min(group[j], i)
    return group


def groups_any_root(n, pairs):
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj  # the larger index may become the root
    return [find(i) for i in range(n)]


def block_no_shortcut(block, x):
    out = block.relu(block.bn1(block.conv1(x)))
    return block.relu(block.bn2(block.conv2(out)))


def block_relu_before_add(block, x):
    shortcut = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    return block.relu(block.bn2(block.conv2(out))) + shortcut


def block_ignores_downsample(block, x):
    out = block.relu(block.bn1(block.conv1(x)))
    return block.relu(block.bn2(block.conv2(out)) + x)


def count_state_dict(model):
    return sum(t.numel() for t in model.state_dict().values())


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_tensors(model):
    return len(list(model.parameters()))


def rgb_mean(weight):
    return weight.mean(dim=1, keepdim=True)


def rgb_sum_no_keepdim(weight):
    return weight.sum(dim=1)


def step_never_zeroes(model, x, y, loss_fn, optimizer):
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_before_backward(model, x, y, loss_fn, optimizer):
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    optimizer.step()
    loss.backward()
    return loss.item()


def step_returns_tensor(model, x, y, loss_fn, optimizer):
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def cosine_no_warmup(step, total_steps, warmup_steps):
    return (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps)))) / 2


def cosine_warmup_from_zero(step, total_steps, warmup_steps):
    if step < warmup_steps:
        return step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return (1 + math.cos(math.pi * t)) / 2


def weights_inverse_counts(labels, num_classes):
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return 1 / counts.clamp(min=1)


def weights_unclamped(labels, num_classes):
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return len(labels) / (num_classes * counts)


def cm_transposed(y_true, y_pred, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[p, t] += 1
    return cm


def cm_size_from_labels(y_true, y_pred, num_classes):
    k = max(max(y_true), max(y_pred)) + 1
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    return cm


def f1_micro(y_true, y_pred, num_classes):
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def f1_present_classes_only(y_true, y_pred, num_classes):
    cm = np.zeros((num_classes, num_classes))
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    tp = np.diag(cm)
    den = cm.sum(0) + cm.sum(1)
    present = cm.sum(1) > 0
    return float(np.mean(2 * tp[present] / den[present]))


def wald(successes, n, z=1.96):
    p = successes / n
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def wald_clipped(successes, n, z=1.96):
    low, high = wald(successes, n, z)
    return max(0.0, low), min(1.0, high)


def ece_unweighted(probs, y_true, num_bins=15):
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, num_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf) - 1, 0, num_bins - 1)
    gaps = [abs(correct[bins == m].mean() - conf[bins == m].mean())
            for m in range(num_bins) if (bins == m).any()]
    return float(np.mean(gaps))


def ece_true_class_confidence(probs, y_true, num_bins=15):
    conf = probs[np.arange(len(probs)), y_true]
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, num_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf) - 1, 0, num_bins - 1)
    total = 0.0
    for m in range(num_bins):
        if (bins == m).any():
            total += (bins == m).mean() * abs(correct[bins == m].mean() - conf[bins == m].mean())
    return float(total)


def cam_no_relu(activations, gradients):
    return (gradients.mean(dim=(1, 2), keepdim=True) * activations).sum(dim=0)


def cam_gradient_times_input(activations, gradients):
    return torch.relu((gradients * activations).sum(dim=0))


def normalise_over_batch(cam):
    low, high = cam.min(), cam.max()
    return (cam - low) / (high - low if high > low else 1)


def normalise_nan_on_constant(cam):
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    return (cam - low) / (flat.max(dim=1).values[:, None, None] - low)


def record_without_clone(model, layer, x):
    caught = []
    handle = layer.register_forward_hook(lambda m, i, o: caught.append(o))
    model(x)
    handle.remove()
    return caught[0].detach()


def record_without_remove(model, layer, x):
    caught = []
    layer.register_forward_hook(lambda m, i, o: caught.append(o.detach().clone()))
    model(x)
    return caught[0]


def resize_no_antialias(image, size):
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_nearest(image, size):
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    return F.interpolate(x, size=tuple(size), mode="nearest")[0, 0].numpy()


def sha_unsorted(state_dict):
    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha_values_only(state_dict):
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(state_dict[name].detach().contiguous().reshape(-1).view(torch.uint8)
                 .numpy().tobytes())
    return h.hexdigest()


def _preprocess(module, image, rounding=True, stretch_first=True):
    from cxrlearn.contrast import stretch_contrast_tensor
    from cxrlearn.transforms import resize

    x = image[None, None]
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if stretch_first:
        x = resize(stretch_contrast_tensor(x, module.low, module.high), module.image_size)
    else:
        x = stretch_contrast_tensor(resize(x, module.image_size), module.low, module.high)
    if rounding:
        x = (x * 255).round().clamp(0, 255) / 255
    return (x.expand(-1, module.channels, -1, -1) - module.mean) / module.std


def preprocess_no_rounding(module, image):
    return _preprocess(module, image, rounding=False)


def preprocess_resize_first(module, image):
    return _preprocess(module, image, stretch_first=False)


def host_split(host):
    return host.strip().lower().split(":")[0]


def host_not_lowered(host):
    host = host.strip()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    if host.count(":") > 1:
        return f"[{host}]"
    return host.split(":", 1)[0]


def chance_at_or_below(macro_f1, num_classes, margin=0.15):
    return macro_f1 <= 1 / num_classes + margin


def chance_without_margin(macro_f1, num_classes, margin=0.15):
    return macro_f1 < 1 / num_classes


def api_whole_answer(client, png):
    return client.post("/api/predict", files={"file": ("x.png", png)}).json()


def api_raw_body(client, png):
    return client.post("/api/predict", content=png).json()["probabilities"]


def shard_contiguous(n, rank, world_size):
    per = -(-n // world_size)
    order = (list(range(n)) * world_size)[: per * world_size]
    return order[rank * per:(rank + 1) * per]


def shard_no_padding(n, rank, world_size):
    return list(range(n))[rank::world_size]


def permutation_ignores_epoch(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def permutation_numpy(n, seed, epoch):
    return np.random.default_rng(seed + epoch).permutation(n).tolist()


def gradient_sum(model, loss_fn, x, y, world_size):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for r in range(world_size):
        grads = torch.autograd.grad(loss_fn(model(x[r::world_size]), y[r::world_size]), params)
        total = [t + g for t, g in zip(total, grads, strict=True)]
    return total


def gradient_rank0_only(model, loss_fn, x, y, world_size):
    loss = loss_fn(model(x[0::world_size]), y[0::world_size])
    return list(torch.autograd.grad(loss, list(model.parameters())))



def rank_nearest(values, q):
    n = values.shape[1]
    return values[:, round(q / 100 * (n - 1))][:, None]  # no interpolation


def rank_from_n(values, q):
    n = values.shape[1]
    pos = q / 100 * n  # n, not n - 1
    lo = min(int(pos), n - 1)
    hi = min(lo + 1, n - 1)
    return values[:, lo:lo + 1] + (values[:, hi:hi + 1] - values[:, lo:lo + 1]) * (pos - lo)


def rank_flat(values, q):
    pos = q / 100 * (values.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, values.shape[1] - 1)
    return values[:, lo] + (values[:, hi] - values[:, lo]) * (pos - lo)  # (B,), not (B, 1)


def cam_class_no_relu(cams, target, size):
    raw = torch.from_numpy(np.asarray(cams[target], dtype=np.float32))
    up = F.interpolate(raw[None, None], size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0]
    span = float(up.max() - up.min())
    return ((up - up.min()) / (span or 1.0)).numpy()


def cam_class_align_corners(cams, target, size):
    raw = torch.relu(torch.from_numpy(np.asarray(cams[target], dtype=np.float32)))
    up = F.interpolate(raw[None, None], size=(size, size), mode="bilinear",
                       align_corners=True)[0, 0]
    span = float(up.max() - up.min())
    return ((up - up.min()) / (span or 1.0)).numpy()

WRONG = {
    "01.stretch": [(stretch_minmax, "values differ"), (stretch_unclipped, "values differ"),
                   (stretch_nan_on_constant, "yours nan")],
    "01.percentile": [(percentile_nearest, "values differ"),
                      (percentile_n_not_n_minus_1, "values differ")],
    "01.duplicate_groups": [(groups_direct_only, "item"), (groups_any_root, "item")],
    "02.block_forward": [(block_no_shortcut, "values differ"),
                         (block_relu_before_add, "values differ"),
                         (block_ignores_downsample, "it has a downsample")],
    "02.count_parameters": [(count_state_dict, "more by"), (count_trainable, "fewer by"),
                            (count_tensors, "fewer by")],
    "02.sum_rgb_weights": [(rgb_mean, "values differ"), (rgb_sum_no_keepdim, "returned shape")],
    "03.train_step": [(step_never_zeroes, "differ"), (step_before_backward, "differ"),
                      (step_returns_tensor, "expected a number")],
    "03.cosine_lr": [(cosine_no_warmup, "yours"), (cosine_warmup_from_zero, "yours")],
    "03.class_weights": [(weights_inverse_counts, "values differ"),
                         (weights_unclamped, "yours inf")],
    "04.confusion_matrix": [(cm_transposed, "values differ"),
                            (cm_size_from_labels, "returned shape")],
    "04.macro_f1": [(f1_micro, "yours"), (f1_present_classes_only, "yours")],
    "04.wilson_interval": [(wald, "yours"), (wald_clipped, "yours")],
    "04.expected_calibration_error": [(ece_unweighted, "yours"),
                                      (ece_true_class_confidence, "yours")],
    "05.gradcam_map": [(cam_no_relu, "values differ"),
                       (cam_gradient_times_input, "values differ")],
    "05.minmax_normalise": [(normalise_over_batch, "values differ"),
                            (normalise_nan_on_constant, "yours nan")],
    "05.record_activations": [(record_without_clone, "values differ"),
                              (record_without_remove, "left 1 hook")],
    "06.resize_hw": [(resize_no_antialias, "values differ"), (resize_nearest, "values differ")],
    "06.weights_sha256": [(sha_unsorted, "digests differ"), (sha_values_only, "digests differ")],
    "06.preprocess": [(preprocess_no_rounding, "values differ"),
                      (preprocess_resize_first, "values differ")],
    "07.host_name": [(host_split, "expected '[::1]'"), (host_not_lowered, "yours")],
    "07.is_near_chance": [(chance_at_or_below, "yours True, expected False"),
                          (chance_without_margin, "yours False, expected True")],
    "07.api_probabilities": [(api_whole_answer, "returned the keys"),
                             (api_raw_body, "raised KeyError")],
    "08.shard_indices": [(shard_contiguous, "item"), (shard_no_padding, "items, expected")],
    "08.epoch_permutation": [(permutation_ignores_epoch, "item"), (permutation_numpy, "item")],
    "08.averaged_gradient": [(gradient_sum, "values differ"),
                             (gradient_rank0_only, "values differ")],
    "09.percentile_by_shape": [(rank_nearest, "values differ"), (rank_from_n, "values differ"),
                               (rank_flat, "returned shape")],
    "09.cam_for_class": [(cam_class_no_relu, "values differ"),
                         (cam_class_align_corners, "values differ")],
}


def test_the_registry_holds_enough_exercises_with_the_required_signatures():
    assert len(EXERCISES) >= 24
    lessons = [e.lesson for e in EXERCISES.values()]
    assert all(lessons.count(n) >= 3 for n in range(1, 9))
    for exercise_id, signature in REQUIRED.items():
        assert EXERCISES[exercise_id].signature == signature
    assert all(e.id == key and e.id.startswith(f"{e.lesson:02d}.") for key, e in
               EXERCISES.items())


def test_every_exercise_has_wrong_answers_here():
    assert set(WRONG) == set(EXERCISES)
    assert all(len(answers) >= 2 for answers in WRONG.values())


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_the_reference_passes(exercise_id):
    verdict = EXERCISES[exercise_id].check(reference(exercise_id))
    assert verdict.status == PASSED, verdict.message
    assert verdict.passed and verdict.message.startswith(f"✓ {exercise_id} passed")


@pytest.mark.parametrize("exercise_id,answer,phrase",
                         [(k, f, p) for k, answers in WRONG.items() for f, p in answers],
                         ids=[f"{k}-{f.__name__}" for k, answers in WRONG.items()
                              for f, _ in answers])
def test_a_wrong_answer_fails_with_words_for_the_student(exercise_id, answer, phrase):
    verdict = EXERCISES[exercise_id].check(answer)
    assert verdict.status == FAILED, f"{answer.__name__} slipped through: {verdict.message}"
    assert not verdict.passed
    assert verdict.message.startswith(f"✗ {exercise_id}: ")
    assert phrase in verdict.message, verdict.message
    assert "Traceback" not in verdict.message


def test_the_failing_input_is_the_smallest_and_reproduces():
    verdict = EXERCISES["01.stretch"].check(stretch_unclipped)
    # Two pixels are the fewest on which clipping can matter (one pixel is a constant image).
    assert "image = array of shape (1, 2), float64: [[0, 1]]" in verdict.message
    lines = verdict.message.splitlines()
    assert lines[0].startswith("✗ 01.stretch: not yet. The smallest input")
    assert any(line.strip().startswith("yours:") for line in lines)
    assert any(line.strip().startswith("expected:") for line in lines)
    assert any(line.strip().startswith("where:") for line in lines)


def test_a_constant_image_edge_case_is_named():
    def nan_only_when_constant(image, low=2.0, high=98.0):
        out = reference("01.stretch")(image, low, high)
        # Wrong only on the 3 x 3 image of 0.5s, which hypothesis does not draw.
        special = image.shape == (3, 3) and (image == 0.5).all()
        return out * np.nan if special else out

    verdict = EXERCISES["01.stretch"].check(nan_only_when_constant)
    assert verdict.status == FAILED
    assert "(edge case: constant image)" in verdict.message


def test_an_unsolved_stub_gets_the_stable_one_line_verdict():
    def stretch(image, low=2.0, high=98.0):
        raise NotImplementedError("your code here")

    verdict = EXERCISES["01.stretch"].check(stretch)
    assert verdict.status == UNSOLVED and not verdict.passed
    assert verdict.message == (
        '· 01.stretch: not solved yet: stretch still raises NotImplementedError. Write it, '
        'run its cell, then this one. Stuck? EXERCISES["01.stretch"].hint()')
    assert repr(verdict) == str(verdict) == verdict.message


@pytest.mark.parametrize("body", [None, Ellipsis])
def test_a_stub_that_returns_nothing_is_not_solved_yet(body):
    verdict = EXERCISES["04.macro_f1"].check(lambda y_true, y_pred, num_classes: body)
    assert verdict.status == UNSOLVED
    assert "returns None" in verdict.message and "\n" not in verdict.message


def test_an_answer_that_raises_gets_one_line_without_a_traceback():
    def macro_f1(y_true, y_pred, num_classes):
        return 1 / 0

    verdict = EXERCISES["04.macro_f1"].check(macro_f1)
    assert verdict.status == FAILED and "\n" not in verdict.message
    assert "raised ZeroDivisionError: division by zero, on y_true = [0]" in verdict.message


def test_a_wrong_type_gets_one_line():
    verdict = EXERCISES["01.stretch"].check(lambda image, low=2.0, high=98.0: image.tolist())
    assert verdict.status == FAILED and "\n" not in verdict.message
    assert "returned list, expected a numpy array" in verdict.message


def test_an_endless_answer_is_stopped_with_one_line(monkeypatch):
    monkeypatch.setattr(core, "TIME_LIMIT", 0.3)

    def stretch(image, low=2.0, high=98.0):
        while True:
            pass

    verdict = EXERCISES["01.stretch"].check(stretch)
    assert verdict.status == FAILED and "\n" not in verdict.message
    assert "ran longer than 0.3 s and was stopped" in verdict.message


def test_the_time_limit_also_works_outside_the_main_thread(monkeypatch):
    import threading

    monkeypatch.setattr(core, "TIME_LIMIT", 0.3)
    seen = []

    def stretch(image, low=2.0, high=98.0):
        while True:
            pass

    worker = threading.Thread(target=lambda: seen.append(EXERCISES["01.stretch"].check(stretch)))
    worker.start()
    worker.join(30)
    assert "ran longer than 0.3 s" in seen[0].message


def test_not_a_function_gets_one_line():
    verdict = EXERCISES["01.stretch"].check(np.zeros(3))
    assert verdict.status == FAILED and "takes your function stretch itself" in verdict.message


@pytest.mark.parametrize("exercise_id,answer", [
    ("01.stretch", stretch_minmax), ("04.wilson_interval", wald),
    ("08.shard_indices", shard_contiguous), ("03.train_step", step_never_zeroes)])
def test_the_message_is_the_same_on_every_run(exercise_id, answer):
    first = EXERCISES[exercise_id].check(answer).message
    assert EXERCISES[exercise_id].check(answer).message == first


def test_the_message_is_the_same_in_a_fresh_process():
    code = ("from cxrlearn.exercises import EXERCISES\n"
            "def wald(successes, n, z=1.96):\n"
            "    p = successes / n; h = z * (p * (1 - p) / n) ** 0.5\n"
            "    return p - h, p + h\n"
            "print(EXERCISES['04.wilson_interval'].check(wald).message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.rstrip("\n") == EXERCISES["04.wilson_interval"].check(wald).message


def test_verdicts_are_recorded_in_memory_and_in_the_file(tmp_path, monkeypatch):
    target = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(core.VERDICTS_ENV, str(target))
    EXERCISES["08.shard_indices"].check(shard_contiguous)
    EXERCISES["08.shard_indices"].check(reference("08.shard_indices"))
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["status"] for r in rows] == [FAILED, PASSED]
    assert core.RESULTS["08.shard_indices"].status == PASSED


def test_hint_and_solution_are_one_call_away():
    e = EXERCISES["01.stretch"]
    assert "np.percentile" in e.hint() and repr(e.hint()) == str(e.hint())
    solution = e.solution()
    import inspect

    from cxrlearn import contrast
    assert inspect.getsource(contrast.stretch_contrast).rstrip() in solution
    assert "def _stretch_numpy" in solution and "cxrlearn/contrast.py" in solution
    for exercise in EXERCISES.values():
        assert "def " in exercise.solution() and exercise.hint_text


def test_the_verdict_shows_as_html_in_a_notebook():
    verdict = EXERCISES["08.shard_indices"].check(shard_contiguous)
    html = verdict._repr_html_()
    assert html.startswith("<pre") and "08.shard_indices" in html and "<br" not in html


def test_importing_the_exercises_imports_neither_matplotlib_nor_fastapi():
    code = ("import sys, cxrlearn.exercises\n"
            "print('matplotlib' in sys.modules, 'fastapi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------------------------
# The references added for the exercises, against the real thing


@pytest.mark.parametrize("n", [1, 2, 5, 7, 12])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_shard_indices_is_what_distributed_sampler_gives(n, world_size):
    from torch.utils.data import DistributedSampler

    from cxrlearn.distributed import shard_indices

    for rank in range(world_size):
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank,
                                     shuffle=False)
        assert shard_indices(n, rank, world_size) == list(sampler)


@pytest.mark.parametrize("n,seed,epoch", [(1, 0, 0), (7, 0, 1), (10, 3, 2), (33, 1, 0)])
def test_epoch_permutation_is_distributed_samplers_shuffle(n, seed, epoch):
    from torch.utils.data import DistributedSampler

    from cxrlearn.distributed import epoch_permutation

    sampler = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    assert epoch_permutation(n, seed, epoch) == list(sampler)


@pytest.mark.parametrize("world_size", [1, 2, 3, 6])
def test_averaged_gradient_is_the_whole_batch_gradient(world_size):
    from cxrlearn.distributed import averaged_gradient

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    loss_fn = nn.CrossEntropyLoss()
    whole = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    got = averaged_gradient(model, loss_fn, x, y, world_size)
    for g, w in zip(got, whole, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_map_is_the_batched_formula_and_gradcams_raw_map():
    from cxrlearn.gradcam import GradCAM, gradcam_map, record_activations

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(1, 1, 5, 5)
    with GradCAM(model, model[2]) as cam:
        result = cam(x, 1)
    # The same map from autograd, by hand: activations and their gradient.
    acts = model[2](model[1](model[0](x))).detach().requires_grad_(True)
    score = model[4:](model[3](acts.clone()))[0, 1]
    (grads,) = torch.autograd.grad(score, acts)
    torch.testing.assert_close(gradcam_map(acts[0].detach(), grads[0]), result.raw[0])
    # record_activations sees the conv's output, before the in-place ReLU changes it.
    torch.testing.assert_close(record_activations(model, model[0], x), model[0](x))
    assert not model[0]._forward_hooks


def test_macro_f1_is_the_mean_of_hand_computed_f1():
    from cxrlearn.evaluation.metrics import macro_f1

    # Class 2 never predicted (F1 0); class 3 absent from both (0/0 -> 0).
    y_true, y_pred = [0, 0, 1, 2, 2], [0, 1, 1, 1, 0]
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 * 1 + 2 + 0), 0.0, 0.0]
    assert macro_f1(y_true, y_pred, 4) == pytest.approx(sum(f1) / 4, abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 1), (100, 120), (30, 30), (7, 19)])
def test_wilson_interval_z_is_wilson_interval_at_the_matching_confidence(k, n):
    from statistics import NormalDist

    from cxrlearn.evaluation.uncertainty import wilson_interval, wilson_interval_z

    z = NormalDist().inv_cdf(0.975)
    assert wilson_interval_z(k, n, z) == pytest.approx(wilson_interval(k, n, 0.95), abs=1e-12)
    # 100 of 120 at z = 1.96 is the docstring's [75.7%, 88.9%].
    assert [round(v, 3) for v in wilson_interval_z(100, 120)] == [0.757, 0.889]


def test_count_parameters_matches_torchvisions_resnet18():
    from cxrlearn.resnet import count_parameters, resnet18

    assert count_parameters(resnet18(num_classes=1000)) == 11_689_512
    assert count_parameters(resnet18(num_classes=4)) == 11_178_564


def test_train_step_is_one_batch_of_train_one_epoch():
    from torch.utils.data import DataLoader, TensorDataset

    from cxrlearn.training import train_one_epoch, train_step

    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(2):  # twice, so that a missing zero_grad would show
        loss = train_step(a, x, y, loss_fn, opt_a)
        stats = train_one_epoch(b, DataLoader(TensorDataset(x, y), batch_size=4), loss_fn,
                                opt_b, torch.device("cpu"))
        assert loss == pytest.approx(stats["loss"], abs=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_is_near_chance_is_the_rule_of_the_apps_warning():
    from cxrlearn.app.card import is_near_chance, quality_warning

    for f1 in (0.2, 0.39, 0.4, 0.41, 0.9):
        warned = quality_warning({"val_macro_f1": f1}, 4, "best.pt") is not None
        assert warned == is_near_chance(f1, 4)


def test_the_docs_page_lists_every_exercise():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    hooks = root / "tools" / "docs_hooks"
    spec = importlib.util.spec_from_file_location("exercises_list", hooks / "exercises_list.py")
    hook = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(hooks))  # as mkdocs loads a hook: its folder importable
    try:
        spec.loader.exec_module(hook)
    finally:
        sys.path.remove(str(hooks))
    page = (root / "docs" / "exercises.md").read_text()
    assert hook.MARKER in page
    tables = hook.exercise_tables()
    for exercise in EXERCISES.values():
        assert f"| `{exercise.id}` | `{exercise.signature}` |" in tables
