"""Writes lessons/01_data_and_contrast.ipynb (sources only; run nbconvert to fill outputs)."""
import nbformat as nbf

cells = []


def md(s):
    cells.append(nbf.v4.new_markdown_cell(s.strip()))


def code(s, tags=None):
    cells.append(nbf.v4.new_code_cell(s.strip(), metadata={"tags": tags} if tags else {}))


md(r"""
# 01 · Data and contrast

**The idea.** A chest X-ray is a grey image, and most radiographs use only a narrow band of the
grey levels available. *Contrast stretching* spreads that band over the whole range:

$$\text{out} = \operatorname{clip}\!\left(\frac{x - p_{2}}{p_{98} - p_{2}},\ 0,\ 1\right)$$

where $p_2$ and $p_{98}$ are the 2nd and 98th percentiles of the image's pixel values.
Percentiles instead of the minimum and maximum, because a few burnt-in letters or dead pixels
should not decide the window. The reference project stretched every image this way before
training; Rahman et al. (2021, *Computers in Biology and Medicine* 132:104319) studied how such
enhancement changes COVID-19 detection on this very database.

In this lesson you will look at real X-rays, build the stretch by hand and check it against
`cxrlearn` and scikit-image, prepare images for a network, split the data honestly, and hunt
for duplicates that would leak between the splits.
""")
md("## Setup")
code("""
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from PIL import Image
from skimage.exposure import rescale_intensity

import cxrlearn.data as cxd
from cxrlearn import CxrlearnError
from cxrlearn.contrast import stretch_contrast
from cxrlearn.transforms import Preprocess, eval_transform, prepare, train_transform

torch.manual_seed(0)
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 72
""")
md("""
## Look at the data

The package ships 400 real X-rays from the COVID-19 Radiography Database (Chowdhury et al.
2020; Rahman et al. 2021), 100 per class, as 128x128 grey PNGs. `scan_folder` reads a folder in
the Kaggle layout: one sub-folder per class.
""")
code("""
scan = cxd.scan_folder(cxd.sample_root())
print(scan.class_names)
print(scan.counts())
print(len(scan.items), "images; unknown folders:", scan.unknown)
""")
code("""
first_of_class = [next(p for p, y in scan.items if y == k) for k in range(len(scan.class_names))]
raw = [cxd.load_image(p) for p in first_of_class]
print([r.shape for r in raw], raw[0].dtype, float(raw[0].min()), float(raw[0].max()))
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for ax, img, name in zip(axes, raw, scan.class_names):
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(cxd.DISPLAY_NAMES[name])
    ax.axis("off")
plt.show()
""")
md("""
`load_image` turns any file (8-bit or 16-bit grey, RGB, RGBA, palette, JPEG) into one format:
a float32 array `(H, W)` with values in [0, 1]. A bad file raises `CxrlearnError` naming it:
""")
code("""
with tempfile.TemporaryDirectory() as tmp:
    fake = Path(tmp) / "not_really.png"
    fake.write_text("this is a text file")
    try:
        cxd.load_image(fake)
    except CxrlearnError as e:
        print("CxrlearnError:", e.message)
""")
md("""
## Build the stretch by hand

Take one image and look at where its grey levels sit.
""")
code("""
img = raw[2]  # a Normal X-ray
p_low, p_high = np.percentile(img, (2, 98))
print(f"min {img.min():.3f}  p2 {p_low:.3f}  p98 {p_high:.3f}  max {img.max():.3f}")
""")
md("Now the formula, one step at a time: shift, scale, clip.")
code("""
shifted = img - p_low                      # p2 moves to 0
scaled = shifted / (p_high - p_low)        # p98 moves to 1
stretched_by_hand = np.clip(scaled, 0, 1)  # the 2% tails on each side saturate
print(stretched_by_hand.shape, round(float(stretched_by_hand.min()), 3),
      round(float(stretched_by_hand.max()), 3))
print("share of pixels at 0:", round(float((stretched_by_hand == 0).mean()), 3),
      " at 1:", round(float((stretched_by_hand == 1).mean()), 3))
""")
md("""
## Check against the library and scikit-image

The hand-built version must equal `cxrlearn.contrast.stretch_contrast`, and both must equal
scikit-image's `rescale_intensity` with the same window, an independent implementation.
""")
code("""
from_library = stretch_contrast(img)
from_skimage = rescale_intensity(img.astype(np.float64), in_range=(p_low, p_high),
                                 out_range=(0, 1))
np.testing.assert_allclose(from_library, stretched_by_hand, atol=1e-6)
np.testing.assert_allclose(from_library, from_skimage, atol=1e-6)
torch.testing.assert_close(stretch_contrast(torch.from_numpy(img)), torch.from_numpy(from_library))
print("hand-built == cxrlearn == scikit-image (numpy and torch)")
""")
md("""
One case needs a decision: a constant image has $p_2 = p_{98}$ and the formula divides by zero.
cxrlearn returns the limit of the formula as the window shrinks (a step: 0 at or below $p_2$,
1 above), so a blank image becomes zeros, never NaN.
""")
code("""
print(stretch_contrast(np.full((3, 3), 0.7)))
""")
md("## Before and after, in pictures")
code("""
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
axes[0].set_title("before")
axes[1].imshow(from_library, cmap="gray", vmin=0, vmax=1)
axes[1].set_title("after")
for a in axes[:2]:
    a.axis("off")
sns.histplot(img.ravel(), bins=64, ax=axes[2], color="grey", label="before", stat="density")
sns.histplot(from_library.ravel(), bins=64, ax=axes[2], color="tab:blue", label="after",
             stat="density", alpha=0.5)
axes[2].set_xlabel("grey level")
axes[2].legend()
fig.tight_layout()
plt.show()
""")
md("""
## Prepare images for the network

Every image goes through two stages (`cxrlearn.transforms`):

1. **prepare**, once: stretch, resize to `S x S` with antialiasing, round to 8 bits;
2. **transform**, every epoch: random flip and a small rotation/zoom/shift for training, then
   repeat the grey channel to 3 channels and normalise with the ImageNet mean and std.
""")
code("""
prepared = prepare(img, image_size=64)
print("prepared:", tuple(prepared.shape), prepared.dtype)
x = prepared.float() / 255
x_eval = eval_transform(channels=3)(x)
x_train = train_transform(channels=3)(x, torch.Generator().manual_seed(0))
print("eval:", tuple(x_eval.shape), "mean", round(x_eval.mean().item(), 3))
print("train:", tuple(x_train.shape), "differs from eval:", not torch.equal(x_train, x_eval))
""")
md("""
`XrayDataset` wraps this as a PyTorch `Dataset` yielding `(x, y)`. Augmentations for item `i`
of epoch `e` come from a generator seeded with `(seed, e, i)`, so a seed fixes every flip.
""")
code("""
paths = [p for p, _ in scan.items]
labels = [y for _, y in scan.items]
ds = cxd.XrayDataset(paths, labels, Preprocess(image_size=64), transform=train_transform())
x0, y0 = ds[0]
print(len(ds), tuple(x0.shape), x0.dtype, y0, scan.class_names[y0])
print("same item twice is identical:", torch.equal(ds[0][0], x0))
""")
md("""
## An honest split

The reference project held out 30 images per class for the test set. `split_items` does that
per class (stratified) from a seed, then takes a validation share of what remains. Validation
is for every decision during training; the test split is opened once, at the end.
""")
code("""
rows = cxd.split_items(scan.items, test_per_class=30, val_fraction=0.15, seed=0)
table = {s: [sum(1 for r in rows if r.split == s and r.label == k) for k in range(4)]
         for s in cxd.SPLITS}
for s, counts in table.items():
    print(f"{s:>5}: {counts}  total {sum(counts)}")
same = cxd.split_items(scan.items, seed=0) == rows
print("same seed, same split:", same)
""")
md("The split is written down as a CSV manifest, so a run can be audited and reproduced:")
code("""
with tempfile.TemporaryDirectory() as tmp:
    manifest = Path(tmp) / "manifest.csv"
    cxd.write_manifest(manifest, rows, root=cxd.sample_root(), class_names=scan.class_names)
    print(manifest.read_text().splitlines()[:3])
    back = cxd.read_manifest(manifest, root=cxd.sample_root(), class_names=scan.class_names)
    print("read back equal:", [(r.path.name, r.label, r.split) for r in back]
          == [(r.path.name, r.label, r.split) for r in rows])
""")
md("""
## The leakage check

The full database contains the same radiograph under different names. If one copy is trained
on and another tested, the test measures memory. A **difference hash** catches such copies:
shrink the image to 16x17, and keep one bit per pixel pair: is it brighter than its neighbour?
Copies differ in a few of the 256 bits; different X-rays in about half of them.
""")
code("""
hashes = np.stack([cxd.dhash(cxd.load_image(p)) for p in paths])
print("hashes:", hashes.shape, hashes.dtype, "(256 bits packed into 32 bytes)")
pairs = cxd.near_duplicate_pairs(hashes, max_distance=12)
print("near-duplicate pairs within 12 bits in the sample:", len(pairs))
""")
md("""
The bundled sample was cleaned of copies. To see the check work, make a copy the way copies
arise in practice (brighter, re-saved as JPEG, resized) and compare:
""")
code("""
test_image = cxd.load_image(rows[[r.split for r in rows].index("test")].path)
with tempfile.TemporaryDirectory() as tmp:
    copy_path = Path(tmp) / "renamed_copy.jpg"
    brighter = np.clip(test_image * 1.1 + 0.03, 0, 1)
    Image.fromarray((brighter * 255).astype(np.uint8)).resize((100, 100)).save(copy_path,
                                                                               quality=80)
    copy_hash = cxd.dhash(cxd.load_image(copy_path))
print("copy vs original:", cxd.hamming(copy_hash, cxd.dhash(test_image)), "bits")
print("original vs another X-ray:", cxd.hamming(hashes[0], hashes[1]), "bits")
""")
md("How far is each X-ray from its nearest neighbour in the sample? Far from the threshold:")
code("""
xor = np.bitwise_xor(hashes[:, None, :], hashes[None, :, :])
dist = np.unpackbits(xor, axis=2).sum(axis=2)
np.fill_diagonal(dist, 256)
nearest = dist.min(axis=1)
print("nearest-neighbour distance: min", nearest.min(), " median", int(np.median(nearest)))
fig, ax = plt.subplots(figsize=(5, 2.5))
sns.histplot(nearest, bins=30, ax=ax)
ax.axvline(12, color="red", ls="--", label="duplicate threshold")
ax.set_xlabel("bits to the nearest other image")
ax.legend()
plt.show()
""")
md("""
`split_items(..., groups=cxd.duplicate_groups(len(items), pairs))` keeps every group of copies
on one side of the split. `cxrlearn data check DIR` runs this check on a whole folder and lists
duplicates that sit in two different classes.

## Class balance

The sample is balanced on purpose: 100 images per class. The full database (21,165 images) is
not: 48% Normal, 28% Lung_Opacity, 17% COVID, 6% Viral Pneumonia. With that imbalance a model
that always answers "Normal" is right about half the time, which is why lesson 04 looks at
per-class recall and macro averages, never accuracy alone.
""")
code("""
full = {"COVID": 0.17, "Lung_Opacity": 0.28, "Normal": 0.48, "Viral Pneumonia": 0.06}
fig, ax = plt.subplots(figsize=(6, 2.5))
xs = np.arange(4)
ax.bar(xs - 0.2, [c / len(scan.items) for c in scan.counts().values()], 0.4, label="sample")
ax.bar(xs + 0.2, list(full.values()), 0.4, label="full database")
ax.set_xticks(xs, [cxd.DISPLAY_NAMES[n] for n in scan.class_names])
ax.set_ylabel("share of images")
ax.legend()
plt.show()
""")
md("""
## Summary

- `load_image` turns any X-ray file into a float `(H, W)` image in [0, 1], or names the bad file.
- Contrast stretching maps the 2nd-98th percentile window onto [0, 1]; we built it by hand and
  it equals `stretch_contrast` and scikit-image's `rescale_intensity`.
- Images are *prepared* once (stretch, resize, 8 bits) and *transformed* every epoch
  (augment, channels, normalise).
- The split is stratified, seeded and written to a manifest; the test split stays closed.
- A difference hash finds copies that would leak between splits.

## Exercises

1. Stretch with the 0th and 100th percentiles (min-max). Find an image in the sample where the
   result looks clearly worse than with 2 and 98, and explain why.
2. Change `max_distance` in `near_duplicate_pairs` to 30. Look at the pairs it finds: are they
   copies?
3. The data README says the Viral Pneumonia images are of children. Plot the mean image of each
   class. What could a network learn from the differences you see?
""")

nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata["language_info"] = {"name": "python"}
nbf.write(nb, "lessons/01_data_and_contrast.ipynb")
