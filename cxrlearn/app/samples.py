"""Sample X-rays to try: a few of the bundled images, served by name from a fixed list.

The package ships 400 X-rays (`cxrlearn.data.sample_root()`, 100 per class). The page
offers the first `SAMPLES_PER_CLASS` of each class *the model knows*, so that the app can
be tried without an X-ray at hand, and shows the class the data set gives each one next to
the answer. A model trained on other classes (a student's "Healthy" / "Pneumothorax") is
offered none: an X-ray of a class it cannot answer, labelled with a name it has never seen,
would only teach that the network is wrong. The page says so in a sentence instead.

A request names a sample as `/api/samples/{class_name}/{file_name}`. The two names are
looked up in the list made when the app starts, never joined into a path: `..`, an
absolute path or an encoded slash is simply not in the list, so no request can reach
another file.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from cxrlearn.app.schemas import Sample
from cxrlearn.data import sample_root

__all__ = ["SAMPLES_PER_CLASS", "SampleShelf"]

SAMPLES_PER_CLASS = 3
"""How many X-rays of each class the page offers."""


class SampleShelf:
    """The sample X-rays the app serves: a fixed list, made once.

    Args:
        root: Folder of `<Class>/<file>.png` (default: the bundled sample).
        per_class: How many files of each class, the first by name.
        classes: The model's class names: only their folders are offered (None: every
            folder).
    """

    def __init__(self, root: Path | None = None, per_class: int = SAMPLES_PER_CLASS,
                 classes: Iterable[str] | None = None) -> None:
        root = sample_root() if root is None else root
        self._files: dict[tuple[str, str], Path] = {}
        wanted = None if classes is None else set(classes)
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for folder in folders:
            if wanted is not None and folder.name not in wanted:
                continue
            for path in sorted(folder.glob("*.png"))[:per_class]:
                self._files[(folder.name, path.name)] = path

    def listing(self) -> list[Sample]:
        """The samples, class by class; `url` is where each one's PNG is served."""
        return [Sample(class_name=c, file=f,
                       url=f"/api/samples/{quote(c, safe='')}/{quote(f, safe='')}")
                for c, f in self._files]

    def find(self, class_name: str, file_name: str) -> Path | None:
        """The file of a listed sample, or None for any other pair of names."""
        return self._files.get((class_name, file_name))
