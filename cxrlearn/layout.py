"""The map of the package: every module's layer, lessons and one-line summary, in one place.

The package reads bottom-up, like the lessons (house style, section 16). `LAYERS` lists its
layers from the bottom: a module may import modules of its own layer or of lower ones, never
of a higher one. Each `Module` names the lessons that teach it. Three things are read from
this map rather than written again:

- the architecture test (`tests/test_architecture.py`), which checks every import against
  the layers, every module's `Lesson:` line against its lessons, and the README's lesson
  table against both;
- the tables of the docs' architecture page, generated when the site is built
  (`tools/docs_hooks/module_map.py`);
- a reader's question "which lesson explains this module?": `lessons_of("data.dicom")`.

A package's submodules are listed one by one, or not at all: then the package's entry
stands for every module inside it (`cli`, `app`). Plain data, importing nothing of cxrlearn,
so that anything can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Module", "Layer", "LAYERS", "MODULES", "LESSON_NUMBERS", "lessons_of"]

LESSON_NUMBERS = tuple(range(1, 10))
"""The lessons, `lessons/01_*.ipynb` to `lessons/09_*.ipynb`."""


@dataclass(frozen=True)
class Module:
    """One module (or one package, standing for its unlisted submodules).

    Attributes:
        name: The dotted name without `cxrlearn.`: `"runs"`, `"data.dicom"`.
        lessons: The lessons that teach it (numbers), in order; empty for none.
        summary: What it holds, in one line (Markdown).
    """

    name: str
    lessons: tuple[int, ...]
    summary: str


@dataclass(frozen=True)
class Layer:
    """Modules that may import one another and anything in the layers below.

    Attributes:
        title: What the layer is about, as the architecture page heads it.
        modules: Its modules, in the order the page lists them.
    """

    title: str
    modules: tuple[Module, ...]


LAYERS: tuple[Layer, ...] = (
    Layer("The bottom: errors, files, settings, this map", (
        Module("errors", (), "`CxrlearnError`, the one exception for faults a user can fix "
               "(and the training stops)"),
        Module("atomic", (3,), "atomic file writing: a file is whole or absent, never half "
               "written"),
        Module("settings", (3,), "`setting(...)`: each setting's default, check, help text "
               "and flag, written once; its stored form and the resume comparison"),
        Module("layout", (), "this map: every module's layer, lessons and summary"),
    )),
    Layer("Contrast", (
        Module("contrast", (1,), "percentile contrast stretching, in numpy and in scriptable "
               "torch; `LOW`, `HIGH`"),
    )),
    Layer("Preprocessing", (
        Module("transforms", (1,), "resize, flip, affine, channels, normalise; `Preprocess`, "
               "the pipeline's settings and their defaults"),
    )),
    Layer("Images in, tensors out", (
        Module("data", (1,), "the package's front: `load_image`, `scan_folder`, "
               "`split_dataset`, the bundled sample"),
        Module("data.dicom", (6,), "a DICOM radiograph to a grey image (rescale, MONOCHROME1)"),
        Module("data.images", (1,), "any X-ray file (PNG, JPEG, DICOM) to a grey float image, "
               "with clear errors"),
        Module("data.folder", (1,), "class folders (any names) to `(path, label)` pairs"),
        Module("data.dedup", (1,), "difference hashes and near-duplicate groups"),
        Module("data.splits", (1,), "the seeded, stratified split and its `manifest.csv`"),
        Module("data.cache", (1,), "prepared images computed once and kept on disk; "
               "`default_cache_dir`"),
        Module("data.dataset", (1,), "`XrayDataset` and `split_dataset`: one part of a split "
               "as `(x, y)`"),
    )),
    Layer("The network", (
        Module("resnet", (2,), "ResNet18 block by block, with torchvision's names; a stage "
               "summary as text"),
        Module("transfer", (2,), "ImageNet weights (hash-checked download), grey `conv1`, a "
               "new head, freezing"),
    )),
    Layer("What the loop needs, and judging a model", (
        Module("device", (3,), "`select_device`: CUDA, else Apple MPS, else the CPU"),
        Module("seeding", (3,), "seeds and the random states a checkpoint saves"),
        Module("schedule", (3,), "the learning-rate schedule and `SizeSchedule` (progressive "
               "resizing), pure functions of the step and the epoch"),
        Module("stochastic_depth", (3,), "skip residual branches at random while training, "
               "by forward hooks (off by default)"),
        Module("evaluation", (4,), "the package of lesson 04: numbers in, numbers out, no "
               "model"),
        Module("evaluation.metrics", (4,), "the confusion matrix and scikit-learn's "
               "classification report"),
        Module("evaluation.roc", (4,), "ROC curves and their area, one class against the rest"),
        Module("evaluation.uncertainty", (4,), "Wilson and bootstrap intervals"),
        Module("evaluation.calibration", (4,), "reliability bins, ECE, temperature scaling"),
        Module("evaluation.report", (4,), "the report as text, and as cells for a table, with "
               "its intervals"),
        Module("evaluation.plots", (4,), "learning curves, confusion matrix, ROC curves, "
               "reliability diagram, mistakes"),
    )),
    Layer("Checkpoints and several processes", (
        Module("checkpoint", (3,), "safe load, metadata checks; `last.pt` (resume) and "
               "`best.pt` (use)"),
        Module("distributed", (8,), "what data parallelism adds to the loop: DDP, each rank's "
               "slice, all-reduces"),
    )),
    Layer("The training loop", (
        Module("training", (3,), "`train_one_epoch`, `evaluate`, `predict` and `fit`: the "
               "loop, as the textbook writes it"),
    )),
    Layer("Looking inside", (
        Module("gradcam", (5,), "the Grad-CAM formula and the hooks that catch its two "
               "ingredients"),
        Module("heatmap", (5,), "`overlay` (the one drawing of a map over an X-ray) and "
               "`gradcam_figure`"),
    )),
    Layer("Leaving Python", (
        Module("export", (6,), "the package's front: `export_torchscript` and the readers"),
        Module("export.pipeline", (6,), "`EndToEndModel`: raw X-ray in, probabilities out; its "
               "eager reference"),
        Module("export.files", (6,), "writing TorchScript, lite and `torch.export` files, each "
               "checked before it counts"),
        Module("export.load", (6,), "reading an exported file back as data (metadata, "
               "weights), never running it"),
        Module("export.onnx", (9,), "ONNX: a size-generic graph with CAM outputs, checked "
               "with onnxruntime at sizes never traced; int8; `read_onnx`"),
        Module("export.web", (9,), "the offline phone app (PWA): page, service worker, model "
               "and ONNX Runtime Web, pinned (`runtime`)"),
    )),
    Layer("A trained model", (
        Module("trained", (4,), "`open_model`: a run folder, checkpoint or exported file as "
               "one `TrainedModel`"),
    )),
    Layer("Runs", (
        Module("runs", (4,), "`train_run` and `evaluate_run`: what `cxrlearn train` and "
               "`cxrlearn evaluate` do, as functions"),
    )),
    Layer("The lessons' network", (
        Module("sample_run", (4,), "the small network the lessons share, trained once into "
               "the cache"),
    )),
    Layer("The faces", (
        Module("app", (7,), "the web page and HTTP API (FastAPI): `server`, `service`, "
               "`schemas`, `card` (the quality warning), `samples`, `guard` (hosts, headers, "
               "body size and time), `connections` (the port, slow heads, idle connections)"),
        Module("cli", (), "the `cxrlearn` command: one module per sub-command, argument "
               "parsing and printing"),
        Module("__main__", (), "`python -m cxrlearn`, the same command (torchrun needs it)"),
        Module("exercises", (), "self-checking exercises (`EXERCISES`, `cxrlearn grade`); "
               "each lesson's own in `exercises.lessonNN`"),
        Module("exercises.core", (), "`Exercise` and `Verdict`: checking an answer against "
               "the library, the smallest failing input in plain words"),
        Module("exercises.strategies", (), "the generated inputs the checks share"),
        Module("exercises.grading", (), "running a student's notebook and collecting its "
               "verdicts (`cxrlearn grade`)"),
        Module("exercises.lesson01", (1,), "lesson 01's exercises"),
        Module("exercises.lesson02", (2,), "lesson 02's exercises"),
        Module("exercises.lesson03", (3,), "lesson 03's exercises"),
        Module("exercises.lesson04", (4,), "lesson 04's exercises"),
        Module("exercises.lesson05", (5,), "lesson 05's exercises"),
        Module("exercises.lesson06", (6,), "lesson 06's exercises"),
        Module("exercises.lesson07", (7,), "lesson 07's exercises"),
        Module("exercises.lesson08", (8,), "lesson 08's exercises"),
        Module("exercises.lesson09", (9,), "lesson 09's exercises"),
    )),
)
"""The layers, lowest first."""

MODULES: dict[str, Module] = {m.name: m for layer in LAYERS for m in layer.modules}
"""Every module of the map by name."""


def lessons_of(name: str) -> tuple[int, ...]:
    """The lessons that teach a module: its own entry's, else its package's.

    Example:
        >>> lessons_of("data.dicom"), lessons_of("cxrlearn.app.card")
        ((6,), (7,))
    """
    name = name.removeprefix("cxrlearn.")
    while name not in MODULES:
        if "." not in name:
            raise KeyError(f"{name!r} is not in the map (cxrlearn/layout.py)")
        name = name.rsplit(".", 1)[0]
    return MODULES[name].lessons
