"""Grad-CAM: which parts of the image made the network say class k?

Take a convolutional layer near the end of the network, with activations A of shape
(C, h, w) for one image, and the score y_k of class k (its logit). Grad-CAM weighs each
channel by how much the score rises when the channel rises, averaged over the map, and
keeps the places that push the score up:

    alpha_c = mean over (i, j) of  d y_k / d A[c, i, j]          one weight per channel
    L_k     = ReLU( sum_c alpha_c * A[c] )                        an (h, w) map

The map is then upsampled (bilinear) to the image size and min-max normalised to [0, 1]
so that it can be laid over the X-ray. Selvaraju et al., "Grad-CAM: Visual Explanations
from Deep Networks via Gradient-based Localization", ICCV 2017 (arXiv:1610.02391).

How the two ingredients are caught. A forward hook on the target layer keeps a copy of
its output A and registers a hook on that output *tensor*; autograd calls the tensor hook
with d y_k / d A during the backward pass. Two alternatives look simpler and are wrong:

* `Module.register_full_backward_hook` wraps the layer's output in a view; when the next
  layer is an in-place ReLU (`nn.ReLU(inplace=True)`, as in torchvision's ResNet) autograd
  refuses to modify that view and the forward pass fails (pytorch issue 61519).
* `Module.register_backward_hook` is deprecated: for a module made of several operations it
  reports the gradient of the last operation only, not of the module's output.

A saliency map must depend on what the network learned. Adebayo et al., "Sanity Checks
for Saliency Maps", NeurIPS 2018, propose the test: re-initialise the top layers, and the
map should change. The tests of this module run that check. Drawing the map over the X-ray
(`overlay`, `gradcam_figure`) is `cxrlearn.heatmap`; explaining a trained model's answer
for a raw X-ray (preprocessing, temperature, a thread-safe copy of the network) is
`cxrlearn.trained.TrainedModel.explain`.

Lesson: lessons/05_grad_cam_with_hooks.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrlearn.errors import CxrlearnError

__all__ = [
    "CamResult",
    "GradCAM",
    "gradcam_from",
    "minmax_normalise",
    "gradcam_map",
    "record_activations",
]


def gradcam_from(acts: Tensor, grads: Tensor) -> Tensor:
    """The Grad-CAM formula: channel weights from the gradients, then a weighted sum.

    A pure function: it reads `acts` and `grads` and changes neither.

    Args:
        acts: Activations A of the target layer.
        grads: Gradients d y_k / d A of each image's class score, same shape as `acts`.

    Returns:
        The raw class activation map, ReLU(sum_c alpha_c A_c), at feature-map
        resolution. Not normalised: its scale is that of the activations.

    Raises:
        ValueError: If the shapes differ or are not four-dimensional.

    Shape:
        acts, grads: (B, C, h, w) -> cam: (B, h, w)
    """
    if acts.ndim != 4 or acts.shape != grads.shape:
        raise ValueError(
            f"acts and grads must both have shape (B, C, h, w); got {tuple(acts.shape)} "
            f"and {tuple(grads.shape)}"
        )
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): one weight per channel
    return torch.relu((alpha * acts).sum(dim=1))  # (B, h, w)


def minmax_normalise(cam: Tensor) -> Tensor:
    """Rescale each map on its own so that its smallest value is 0 and its largest is 1.

    A map that is constant (for instance all zero, when no place raises the class score)
    carries no "where" and becomes all zero, never NaN.

    Args:
        cam: A batch of maps.

    Returns:
        A new tensor of maps in [0, 1]; the input is not changed.

    Shape:
        cam: (B, H, W) -> (B, H, W)
    """
    flat = cam.flatten(start_dim=1)  # (B, H*W)
    low = flat.min(dim=1).values[:, None, None]  # (B, 1, 1)
    span = flat.max(dim=1).values[:, None, None] - low  # (B, 1, 1)
    # A constant map has span 0 and cam - low = 0: dividing by 1 keeps it 0 instead of NaN.
    return (cam - low) / torch.where(span > 0, span, torch.ones_like(span))


class CamResult(NamedTuple):
    """What `GradCAM` returns for a batch of B images of size H x W, with K classes.

    Attributes:
        cams: Heat maps at image size, each min-max normalised to [0, 1]. Shape (B, H, W).
        raw: The maps from `gradcam_from`, before upsampling and normalisation.
            Shape (B, h, w).
        scores: The logit that was explained, logits[i, targets[i]]. Shape (B,).
        targets: The class explained for each image. Shape (B,), dtype long.
        probs: Softmax of the logits, for every class. Shape (B, K).
        logits: The logits themselves. Shape (B, K).
    """

    cams: Tensor
    raw: Tensor
    scores: Tensor
    targets: Tensor
    probs: Tensor
    logits: Tensor


class GradCAM:
    """Grad-CAM for any classifier, as a context manager that owns its hooks.

    The hook is registered on `__enter__` and removed on `__exit__`, also when the body of
    the `with` block raises. Between calls the object keeps no tensors.

    Args:
        model: A network that maps a batch (B, C, H, W) to logits (B, K).
        target_layer: The layer whose output is explained; it must run once per forward
            pass. Defaults to `model.layer4[-1]`, the last block of a ResNet.

    Raises:
        CxrlearnError: If `target_layer` is None and the model has no `layer4`.

    Example:
        >>> with GradCAM(model) as cam:  # doctest: +SKIP
        ...     result = cam(x)  # explain each image's predicted class
        >>> result.cams.shape  # doctest: +SKIP
        torch.Size([8, 128, 128])
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None) -> None:
        if target_layer is None:
            layer4 = getattr(model, "layer4", None)
            if not isinstance(layer4, nn.Sequential) or len(layer4) == 0:
                raise CxrlearnError(
                    f"{type(model).__name__} has no `layer4` block to explain; pass "
                    "target_layer=..., usually the last convolutional block"
                )
            target_layer = layer4[-1]
        self.model = model
        self.target_layer = target_layer
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        # Filled only while __call__ runs, emptied before it returns.
        self._capturing = False
        self._acts: list[Tensor] = []
        self._grads: list[Tensor] = []

    def __enter__(self) -> GradCAM:
        if self._handle is not None:
            raise CxrlearnError("this GradCAM is already in use in a `with` block")
        self._handle = self.target_layer.register_forward_hook(self._forward_hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        # Only our own forward pass is recorded: a plain model(x) inside the `with` block
        # must not leave tensors behind.
        if not self._capturing:
            return
        if not isinstance(output, Tensor):
            raise CxrlearnError(
                f"the target layer {type(module).__name__} returns {type(output).__name__}, "
                "not a tensor; choose a convolutional layer or block"
            )
        # A copy, because an in-place ReLU after this layer overwrites `output` itself.
        self._acts.append(output.detach().clone())
        # Registered before any in-place change, so autograd hands this hook the gradient
        # with respect to the value the layer produced.
        output.register_hook(self._grads.append)

    def __call__(self, x: Tensor, targets: Tensor | Sequence[int] | int | None = None) -> CamResult:
        """Explain one class per image.

        The model runs in eval mode, so that batch norm and dropout treat each image on
        its own; every module's train/eval mode is put back afterwards. The score that is
        differentiated is sum_i logits[i, targets[i]]: image i's logit depends on image i
        only, so each image receives the gradient of its own class. No parameter's `.grad`
        is touched and no `requires_grad` flag is changed; works under `torch.no_grad()`.

        Args:
            x: A batch of images, on the model's device.
            targets: The class to explain for each image, one index per image; an int
                asks the same class of every image; None explains each image's
                predicted class.

        Returns:
            A `CamResult` with maps, raw maps, scores, targets and probabilities, all
            detached from the graph.

        Raises:
            CxrlearnError: Outside a `with` block, under `torch.inference_mode()`, for a
                batch that is not (B, C, H, W), for targets of the wrong length or out of
                range, or if the target layer does not run exactly once on the way to the
                logits.

        Shape:
            x: (B, C, H, W), targets: (B,) -> cams (B, H, W), raw (B, h, w),
            scores (B,), targets (B,), probs (B, K)
        """
        if self._handle is None:
            raise CxrlearnError("use GradCAM in a `with GradCAM(model) as cam:` block")
        if torch.is_inference_mode_enabled():
            # Tensors made in inference mode can never take part in autograd.
            raise CxrlearnError(
                "Grad-CAM needs gradients; call it outside torch.inference_mode() "
                "(torch.no_grad() is fine)"
            )
        if x.ndim != 4:
            raise CxrlearnError(f"expected a batch of shape (B, C, H, W), got {tuple(x.shape)}")

        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        self._capturing = True
        try:
            with torch.enable_grad():
                # A leaf that needs a gradient, so the graph exists even if every
                # parameter is frozen; detached from whatever graph `x` came from.
                x = x.detach().requires_grad_(True)
                logits = self.model(x)  # (B, K)
                targets = _as_targets(targets, logits)  # (B,)
                scores = logits.gather(1, targets[:, None])[:, 0]  # (B,)
                self._check_ran_once(self._acts)
                # autograd.grad rather than backward(): it fills no parameter's .grad.
                torch.autograd.grad(scores.sum(), x)
            self._check_ran_once(self._grads)
            raw = gradcam_from(self._acts[0].float(), self._grads[0].float())  # (B, h, w)
            cams = F.interpolate(
                raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]  # (B, H, W)
            return CamResult(
                cams=minmax_normalise(cams),
                raw=raw,
                scores=scores.detach(),
                targets=targets,
                probs=torch.softmax(logits.detach(), dim=1),
                logits=logits.detach(),
            )
        finally:
            self._capturing = False
            self._acts.clear()
            self._grads.clear()
            # modules() lists parents before children, so each module ends with its own
            # flag, and overrides of train() (ResNet's frozen batch norms) see their call.
            for module, training in modes.items():
                module.train(training)

    def _check_ran_once(self, caught: list[Tensor]) -> None:
        if len(caught) != 1:
            raise CxrlearnError(
                f"the target layer {type(self.target_layer).__name__} ran {len(caught)} "
                "times on the way to the logits; Grad-CAM needs a layer that runs once"
            )


def _as_targets(targets: Tensor | Sequence[int] | int | None, logits: Tensor) -> Tensor:
    """Turn the caller's targets into a (B,) long tensor, checked against the logits."""
    if logits.ndim != 2:
        raise CxrlearnError(f"the model must return logits (B, K), got {tuple(logits.shape)}")
    batch_size, num_classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    if isinstance(targets, int):
        targets = [targets] * batch_size
    targets = torch.as_tensor(targets, dtype=torch.long, device=logits.device).flatten()
    if targets.numel() != batch_size:
        raise CxrlearnError(
            f"got {targets.numel()} targets for {batch_size} images; give one class per image"
        )
    if targets.min() < 0 or targets.max() >= num_classes:
        raise CxrlearnError(
            f"targets must be class indices in 0..{num_classes - 1}, got {targets.tolist()}"
        )
    return targets


def gradcam_map(activations: Tensor, gradients: Tensor) -> Tensor:
    """The Grad-CAM formula for one image: `gradcam_from` without the batch dimension.

    Args:
        activations: A of the target layer for one image.
        gradients: d y_k / d A, same shape.

    Returns:
        ReLU(sum_c alpha_c A_c), before upsampling and rescaling.

    Shape:
        activations, gradients: (C, h, w) -> (h, w)
    """
    if activations.ndim != 3:
        raise ValueError(f"expected one image's (C, h, w), got {tuple(activations.shape)}")
    return gradcam_from(activations[None], gradients[None])[0]  # (1, C, h, w) -> (h, w)


def record_activations(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """Run `model(x)` and return what `layer` produced on the way, caught by a forward hook.

    The hook keeps a copy (an in-place ReLU after the layer would overwrite the output
    itself, as in `GradCAM`) and is removed even if the forward pass raises.

    Args:
        model: Any network.
        layer: One of its modules, run once per forward pass.
        x: The network's input.

    Returns:
        The layer's output, detached.

    Shape:
        x: the model's input -> the layer's output, e.g. (B, C, h, w)
    """
    caught: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        caught.append(output.detach().clone())

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    if len(caught) != 1:
        raise CxrlearnError(f"the layer ran {len(caught)} times; it must run once")
    return caught[0]
