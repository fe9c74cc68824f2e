"""Hand-written transforms: shapes, invariants, seeded randomness and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.exposure import rescale_intensity

from cxrlearn.contrast import stretch_contrast
from cxrlearn.transforms import (
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomAffine,
    RandomHorizontalFlip,
    Resize,
    ToChannels,
    eval_transform,
    prepare,
    resize,
    train_transform,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_resize_shapes():
    assert resize(torch.rand(1, 40, 30), 16).shape == (1, 16, 16)
    assert resize(torch.rand(2, 3, 40, 30), 8).shape == (2, 3, 8, 8)
    assert resize(torch.rand(1, 5, 5), 20).shape == (1, 20, 20)  # upsampling too
    assert Resize(12)(torch.rand(3, 50, 50)).shape == (3, 12, 12)


def test_resize_keeps_a_constant_image_constant():
    x = torch.full((1, 97, 61), 0.37)
    for size in (16, 61, 128):
        torch.testing.assert_close(resize(x, size), torch.full((1, size, size), 0.37))


def test_antialias_averages_a_fine_checkerboard():
    # A checkerboard of 4-pixel squares, shifted by 2 pixels: each output pixel covers 8x8
    # input pixels, half black and half white, so the area average is 0.5. Plain bilinear
    # (no antialias) only looks at the 2x2 pixels around the centre of those 8x8, which all
    # fall in one black square here: it would give 0.
    k = torch.arange(128)
    stripes = ((k + 2) // 4) % 2  # 0 0 1 1 1 1 0 0, repeated
    board = (stripes[:, None] ^ stripes[None, :]).to(torch.float32).unsqueeze(0)  # (1, 128, 128)
    out = resize(board, 16)
    torch.testing.assert_close(out, torch.full((1, 16, 16), 0.5), atol=0.02, rtol=0)
    aliased = F.interpolate(board.unsqueeze(0), size=(16, 16), mode="bilinear",
                            align_corners=False, antialias=False)
    assert (aliased - 0.5).abs().min() > 0.4  # the check above can tell the two apart


def test_flip_is_reproducible_and_an_involution():
    x = torch.rand(1, 6, 6)
    flip = RandomHorizontalFlip(0.5)
    outs = [flip(x, gen(s)) for s in range(20)]
    assert all(torch.equal(flip(x, gen(s)), outs[s]) for s in range(20))
    # Over 20 seeds, both outcomes occur, and each is x or x mirrored.
    mirrored = torch.flip(x, dims=[-1])
    assert any(torch.equal(o, mirrored) for o in outs) and any(torch.equal(o, x) for o in outs)
    assert all(torch.equal(o, x) or torch.equal(o, mirrored) for o in outs)
    always = RandomHorizontalFlip(1.0)
    assert torch.equal(always(always(x, gen(1)), gen(2)), x)


def test_flip_probability_extremes():
    x = torch.arange(12.0).reshape(1, 3, 4)
    mirrored = x[..., [3, 2, 1, 0]]  # hand-written mirror
    for s in range(50):
        assert torch.equal(RandomHorizontalFlip(0.0)(x, gen(s)), x)
        assert torch.equal(RandomHorizontalFlip(1.0)(x, gen(s)), mirrored)


def test_affine_with_zero_ranges_is_identity():
    x = torch.rand(1, 17, 17)
    out = RandomAffine(degrees=0.0, scale=0.0, translate=0.0)(x, gen(3))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_affine_is_seeded_and_moves_pixels():
    x = torch.rand(1, 24, 24)
    aff = RandomAffine()
    torch.testing.assert_close(aff(x, gen(5)), aff(x, gen(5)), atol=0, rtol=0)
    assert aff(x, gen(5)).shape == x.shape
    assert not torch.allclose(aff(x, gen(5)), aff(x, gen(6)))
    assert not torch.allclose(aff(x, gen(5)), x)


def test_to_channels():
    x = torch.rand(1, 5, 4)
    out = ToChannels(3)(x)
    assert out.shape == (3, 5, 4)
    for c in range(3):
        assert torch.equal(out[c], x[0])
    assert torch.equal(ToChannels(1)(x), x)


def test_normalize_by_hand():
    x = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 0.0), torch.full((2, 2), 1.0)])
    out = Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
    expected = [(0.5 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(out[c], torch.full((2, 2), expected[c]))


def test_grey_statistics_are_averages_of_imagenet():
    assert GREY_MEAN[0] == pytest.approx(sum(IMAGENET_MEAN) / 3, abs=5e-4)
    assert GREY_STD[0] == pytest.approx(sum(IMAGENET_STD) / 3, abs=5e-4)


def test_eval_transform_by_hand():
    x = torch.rand(1, 8, 8)
    torch.testing.assert_close(eval_transform(1)(x), (x - 0.449) / 0.226)
    out3 = eval_transform(3)(x)
    for c in range(3):
        torch.testing.assert_close(out3[c], (x[0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    with pytest.raises(ValueError, match="channels"):
        eval_transform(2)


def test_train_transform_is_seeded():
    x = torch.rand(1, 16, 16)
    t = train_transform(3)
    a, b = t(x, gen(0)), t(x, gen(0))
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(t(x, gen(0)), t(x, gen(1)))
    # No flip, no affine: just the evaluation pipeline.
    torch.testing.assert_close(train_transform(1, flip=False, affine=False)(x, gen(0)),
                               eval_transform(1)(x))


def test_compose_hands_every_step_the_same_generator():
    seen = []

    def record(x, generator=None):
        seen.append(generator)
        return x + 1

    g = gen(0)
    out = Compose([record, record])(torch.zeros(1), g)
    assert seen == [g, g] and out.item() == 2.0


def test_prepare_step_by_step():
    rng = np.random.default_rng(0)
    image = rng.random((90, 70)).astype(np.float32) ** 2
    out = prepare(image, 32)
    assert out.dtype == torch.uint8 and out.shape == (1, 32, 32)
    # Step by step with the library's pieces: exactly equal.
    stretched = torch.from_numpy(stretch_contrast(image))[None, None]  # (1, 1, H, W)
    small = F.interpolate(stretched, size=(32, 32), mode="bilinear", align_corners=False,
                          antialias=True)
    by_hand = (small * 255).round().clamp(0, 255).to(torch.uint8)[0]
    assert torch.equal(out, by_hand)
    # With scikit-image doing the stretch: equal up to one grey level at rounding edges.
    p = np.percentile(image, (2, 98))
    sk = torch.from_numpy(rescale_intensity(image.astype(np.float64), in_range=tuple(p),
                                            out_range=(0, 1)).astype(np.float32))
    sk_small = F.interpolate(sk[None, None], size=(32, 32), mode="bilinear",
                             align_corners=False, antialias=True)
    sk_u8 = (sk_small * 255).round().to(torch.int16)[0]
    assert (out.to(torch.int16) - sk_u8).abs().max() <= 1


def test_prepare_accepts_uint16_and_tensors():
    img16 = (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)
    as_float = img16.astype(np.float32) / 65535
    # Stretching ignores a global scale, so 16-bit counts and [0, 1] floats agree.
    diff = prepare(img16, 16).to(torch.int16) - prepare(as_float, 16).to(torch.int16)
    assert diff.abs().max() <= 1
    assert torch.equal(prepare(torch.from_numpy(as_float), 16), prepare(as_float, 16))


def test_a_copy_with_other_channels_takes_their_default_normalisation():
    import dataclasses

    from cxrlearn.transforms import GREY_MEAN, GREY_STD, Preprocess

    grey = dataclasses.replace(Preprocess(image_size=32), channels=1)
    assert (grey.mean, grey.std) == (GREY_MEAN, GREY_STD)
    assert dataclasses.replace(grey, channels=3) == Preprocess(image_size=32)
    chosen = Preprocess(image_size=32, channels=1, mean=(0.5,), std=(0.25,))
    assert dataclasses.replace(chosen, image_size=64).mean == (0.5,)  # a choice is kept


def _reflect(k: int, n: int) -> int:
    """Index k of a line of n pixels mirrored at its ends (without repeating the edge)."""
    return -k if k < 0 else 2 * (n - 1) - k if k > n - 1 else k


def test_random_shift_is_a_window_of_the_mirrored_image():
    from cxrlearn.transforms import RandomShift

    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 16, 16)  # every pixel unique
    out = RandomShift(0.125)(x, torch.Generator().manual_seed(3))
    dy, dx = torch.randint(0, 5, (2,), generator=torch.Generator().manual_seed(3)).tolist()
    p = 2  # 0.125 * 16
    expected = torch.empty_like(x)
    for i in range(16):
        for j in range(16):
            expected[:, i, j] = x[:, _reflect(i + dy - p, 16), _reflect(j + dx - p, 16)]
    assert torch.equal(out, expected)
    assert out.shape == x.shape
    assert torch.equal(RandomShift(0.0)(x), x)  # nothing to shift by


def test_random_shift_is_seeded_and_moves_every_image_sometimes():
    from cxrlearn.transforms import RandomShift

    x = torch.rand(1, 32, 32)
    a = RandomShift()(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, RandomShift()(x, torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(1)
    assert any(not torch.equal(RandomShift()(x, g), x) for _ in range(5))


def test_mixup_blends_each_image_with_its_partner():
    from cxrlearn.transforms import BatchMix

    x = torch.rand(6, 1, 8, 8)
    out, partner, share = BatchMix(0.4, 0.0, np.random.default_rng(0))(x)
    assert sorted(partner.tolist()) == list(range(6)) and 0 <= share <= 1
    torch.testing.assert_close(out, share * x + (1 - share) * x[partner])


def test_cutmix_pastes_a_box_whose_area_is_the_partner_share():
    from cxrlearn.transforms import BatchMix

    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    for seed in range(5):  # each image is one constant: count whose pixels each pixel is
        out, partner, share = BatchMix(0.0, 1.0, np.random.default_rng(seed))(x)
        for i in range(4):
            own = (out[i] == x[i]).float().mean().item()
            if partner[i] != i:
                assert own == pytest.approx(share)
                assert torch.all((out[i] == x[i]) | (out[i] == x[partner[i]]))


def test_batch_mix_needs_one_alpha():
    from cxrlearn.transforms import BatchMix

    with pytest.raises(ValueError, match="one of them above 0"):
        BatchMix(0.0, 0.0, np.random.default_rng(0))


def test_flip_shift_augment_puts_a_shift_in_the_training_transform():
    from cxrlearn.transforms import Preprocess, RandomShift

    steps = Preprocess(image_size=64).train_transform(shift=0.0625).transforms
    assert [type(t) for t in steps][:2] == [type(steps[0]), RandomShift]
    assert not any(isinstance(t, RandomShift) for t in Preprocess().train_transform().transforms)
