"""The checking engine: run a student's answer against the library on generated inputs.

An `Exercise` knows the library function that solves it (`reference`), how to generate
inputs for it (a hypothesis strategy, plus hand-picked edge cases such as a constant image
or a class that is never predicted), and how to compare an answer with the reference
(`compare`, which states its tolerance). `Exercise.check(answer)` runs

1. one probe on the first edge case: a stub that still raises `NotImplementedError` (or
   returns None or `...`) gets the stable verdict "not solved yet";
2. hypothesis on generated inputs; on the first failure it *shrinks* the input to the
   smallest one that still fails (fewest pixels, smallest values), which is the one shown;
3. every edge case, in order.

The verdict is the same on every run and every CPU: hypothesis is derandomized (a fixed
seed), keeps no example database and has no deadline; numbers are printed rounded to
4 significant digits; tolerances are stated in the message.

A student's answer never breaks the checker. It runs under a time limit (`TIME_LIMIT`
seconds per call): in the main thread a `SIGALRM` timer interrupts it (the timer can only
interrupt Python code, so a single very long C call ends first); elsewhere, or where there
is no `SIGALRM` (Windows), the answer runs in a daemon thread that is waited for
`TIME_LIMIT` seconds and then abandoned. An answer that raises, times out, or returns the
wrong type or shape gets a one-line verdict; what the answer prints and the warnings it
raises while being checked are swallowed, since it runs dozens of times.

Every verdict is also recorded: in `RESULTS` (the latest verdict of each exercise in this
process) and, when the environment variable `CXRLEARN_VERDICTS` names a file, as one JSON
line appended to it. `cxrlearn grade` reads that file.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import html
import importlib
import inspect
import io
import json
import math
import os
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Exercise", "Verdict", "Mismatch", "RESULTS", "TIME_LIMIT", "VERDICTS_ENV",
           "PASSED", "FAILED", "UNSOLVED", "show", "compare_arrays", "compare_numbers"]

TIME_LIMIT = 10.0
"""Seconds one call of a student's answer may take before it is stopped."""

VERDICTS_ENV = "CXRLEARN_VERDICTS"
"""Environment variable: a file where every verdict is appended as a JSON line."""

PASSED, FAILED, UNSOLVED = "passed", "failed", "not solved yet"

RESULTS: dict[str, Verdict] = {}
"""The latest verdict of each exercise checked in this process, by id."""


@dataclass(frozen=True)
class Verdict:
    """What `Exercise.check` found.

    Attributes:
        exercise: The exercise's id, e.g. "01.stretch".
        status: `PASSED`, `FAILED` or `UNSOLVED` ("not solved yet").
        message: The text a student reads; the same on every run and CPU.
    """

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:  # the notebook's plain-text output, and print()'s
        return self.message

    def _repr_html_(self) -> str:
        colour = {PASSED: "#1a7f37", FAILED: "#cf222e"}.get(self.status, "#6e7781")
        return (f'<pre style="border-left: 4px solid {colour}; padding-left: 0.6em; '
                f'white-space: pre-wrap">{html.escape(self.message)}</pre>')


@dataclass(frozen=True)
class Mismatch:
    """How an answer differs from the reference on one input.

    Attributes:
        kind: "type" or "shape" (shown on one line), or "value" (shown with both results).
        text: Where they differ, in plain words.
    """

    kind: str
    text: str
    got: Any = None
    want: Any = None


class _Shown(str):
    """A string that a notebook shows as itself, without quotes (hint and solution)."""

    def __repr__(self) -> str:
        return str(self)


class _TimeLimit(BaseException):
    """Raised into the answer by the timer; a BaseException so `except Exception` in the
    answer cannot swallow it."""


class _Unsolved(Exception):
    """The answer is still the stub: it returned None or `...`."""


@dataclass(frozen=True)
class _Failure:
    kind: str  # "unsolved", "raised", "timeout", "type", "shape", "value"
    text: str = ""
    got: Any = None
    want: Any = None


def call_with_time_limit(fn: Callable[[], Any], seconds: float | None = None) -> Any:
    """`fn()`, stopped with `_TimeLimit` after `seconds` (default `TIME_LIMIT`; see the
    module docstring)."""
    seconds = TIME_LIMIT if seconds is None else seconds
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum: int, frame: Any) -> None:
            raise _TimeLimit

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the caller below
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():  # cannot be killed: abandoned, it ends with the process
        raise _TimeLimit
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------------------------------
# Showing values in plain words


def _num(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    text = f"{v:.4g}"
    return "0" if text == "-0" else text


def _nested(a: np.ndarray) -> str:
    if a.ndim == 0:
        return _num(a.item())
    return "[" + ", ".join(_nested(row) for row in a) + "]"


def show(value: Any, limit: int = 16) -> str:
    """A value in plain words, on one line: arrays and tensors with their shape and dtype,
    and their values when they have at most `limit` elements, else their range."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        return f"tensor of shape {tuple(value.shape)}, {dtype}: " + _values(
            value.detach().cpu().double().numpy() if value.is_floating_point()
            else value.detach().cpu().numpy(), limit)
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}, {value.dtype}: " + _values(value, limit)
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return _num(value)
    if isinstance(value, tuple):
        inner = ", ".join(show(v, limit) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        if len(value) > 3 * limit:
            head = ", ".join(show(v) for v in value[:limit])
            return f"a list of {len(value)} items: [{head}, ...]"
        return "[" + ", ".join(show(v, limit) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {show(v, limit)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return type(value).__name__


def _values(a: np.ndarray, limit: int) -> str:
    if a.size <= limit:
        return _nested(a)
    if a.dtype.kind in "biuf":
        finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if finite.size == 0:
            return "all nan or inf"
        extra = "" if finite.size == a.size else f", {a.size - finite.size} nan or inf"
        return f"{a.size} values from {_num(finite.min())} to {_num(finite.max())}{extra}"
    return f"{a.size} values"


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ in ("builtins",):
        return kind.__name__
    if kind.__name__ == "ndarray":
        return "a numpy array"
    if kind.__name__ == "Tensor":
        return "a torch tensor"
    return f"{kind.__module__.split('.')[0]}.{kind.__name__}"


# ---------------------------------------------------------------------------------------
# Comparisons, shared by the exercises


def compare_arrays(got: Any, want: Any, atol: float, *, kind: str = "array",
                   rtol: float = 0.0) -> Mismatch | None:
    """Compare a numpy array or torch tensor with the reference's, value by value.

    `kind` is "array" (numpy expected) or "tensor" (torch expected). NaN equals NaN; values
    match when |got - want| <= atol + rtol * |want|.
    """
    import torch

    expected_type = torch.Tensor if kind == "tensor" else np.ndarray
    if not isinstance(got, expected_type):
        return Mismatch("type", f"returned {_type_name(got)}, expected a "
                                f"{'torch tensor' if kind == 'tensor' else 'numpy array'}")
    g = got.detach().cpu().double().numpy() if kind == "tensor" else np.asarray(got)
    w = want.detach().cpu().double().numpy() if kind == "tensor" else np.asarray(want)
    if g.shape != w.shape:
        return Mismatch("shape", f"returned shape {g.shape}, expected {w.shape}")
    if g.dtype.kind not in "biuf":
        return Mismatch("type", f"returned values of dtype {g.dtype}, expected numbers")
    g, w = g.astype(np.float64), w.astype(np.float64)
    with np.errstate(invalid="ignore"):
        close = np.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if close.all():
        return None
    where = np.argwhere(~close)
    first = tuple(int(i) for i in where[0])
    at = f" at {list(first)}" if g.ndim else ""
    return Mismatch("value", f"{len(where)} of {g.size} values differ (tolerance {atol:g}"
                             f"{f' + {rtol:g} x |expected|' if rtol else ''}); the first"
                             f"{at}: yours {_num(g[first])}, expected {_num(w[first])}")


def compare_numbers(got: Any, want: Sequence[float] | float, atol: float,
                    names: Sequence[str] | None = None) -> Mismatch | None:
    """Compare a number, or a tuple of numbers, with the reference's."""
    many = isinstance(want, tuple)
    if many:
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            length = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
            return Mismatch("type", f"returned {_type_name(got)}{length}, expected a tuple "
                                    f"of {len(want)} numbers")
        pairs = list(zip(got, want, strict=True))
    else:
        pairs = [(got, want)]
    for i, (g, _) in enumerate(pairs):
        if isinstance(g, bool) or not isinstance(g, (int, float, np.integer, np.floating)):
            return Mismatch("type", f"returned {_type_name(g)}"
                                    f"{f' as item {i}' if many else ''}, expected a number "
                                    "(a Python float: call float() or .item())")
    for i, (g, w) in enumerate(pairs):
        g, w = float(g), float(w)
        same = (math.isnan(g) and math.isnan(w)) or abs(g - w) <= atol
        if not same:
            what = (names[i] if names else f"item {i}") if many else "the value"
            return Mismatch("value", f"{what}: yours {_num(g)}, expected {_num(w)} "
                                     f"(tolerance {atol:g})")
    return None


# ---------------------------------------------------------------------------------------
# The exercise


def _default_compare(got: Any, want: Any) -> Mismatch | None:
    return None if got == want else Mismatch("value", "the results differ")


def _call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call an answer; a stub's None or `...` means "not solved yet"."""
    out = fn(*args, **kwargs)
    if out is None or out is Ellipsis:
        raise _Unsolved
    return out


def _resolve(ref: Callable | str) -> Callable:
    """A callable, or "module:qualname" imported on first use (so that importing the
    exercises does not import FastAPI or matplotlib)."""
    if not isinstance(ref, str):
        return ref
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(eq=False)
class Exercise:
    """One exercise: a function to write, checked against the library's own.

    Attributes:
        id: "NN.name": the lesson's number, then the function's name.
        signature: The function to write, e.g. "stretch(image, low=2.0, high=98.0) -> image".
        summary: One line: what the function does.
        reference_path: The library callable that solves it, "module:qualname".
        cases: A hypothesis strategy of inputs, each a tuple of arguments (or, with `build`,
            a small description the arguments are built from).
        edge_cases: `(label, case)` pairs checked after the generated ones; the first is also
            the probe that recognises an unsolved stub.
        compare: `compare(got, want, case)` -> None when they agree, else a `Mismatch`.
        hint_text: A hint, shown by `hint()`.
        tolerance: The tolerance, in words, for the documentation and the passed verdict.
        build: Turns a case into fresh arguments (default: a deep copy of the tuple).
        run: `run(fn, args)` calls `fn` (the answer or the reference) and returns what is
            compared (default: `fn(*args)`).
        describe: A case in plain words, one string per argument (default: `show`).
        see_also: More library callables whose source `solution()` shows.
        reference_kwargs: Keyword arguments the reference is called with, and the answer
            is not (e.g. `kind="cosine"` for a schedule).
        max_examples: Generated inputs tried before the edge cases.
    """

    id: str
    signature: str
    summary: str
    reference_path: str
    cases: Any
    edge_cases: Sequence[tuple[str, Any]]
    compare: Callable[[Any, Any, Any], Mismatch | None]
    hint_text: str
    tolerance: str = "exact"
    build: Callable[[Any], tuple] | None = None
    run: Callable[[Callable, tuple], Any] | None = None
    describe: Callable[[Any], list[str]] | None = None
    see_also: Sequence[str] = ()
    reference_kwargs: dict[str, Any] = field(default_factory=dict)
    max_examples: int = 60
    _arg_names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        call = self.signature.split(" -> ")[0]  # "stretch(image, low=2.0, high=98.0)"
        inside = call[call.index("(") + 1: call.rindex(")")]
        self._arg_names = [a.split("=")[0].strip() for a in inside.split(",") if a.strip()]

    @property
    def name(self) -> str:
        """The function's name, e.g. "stretch"."""
        return self.signature.split("(")[0]

    @property
    def lesson(self) -> int:
        """The lesson's number."""
        return int(self.id.split(".")[0])

    @functools.cached_property
    def reference(self) -> Callable:
        """The library callable that solves the exercise."""
        return _resolve(self.reference_path)

    def hint(self) -> str:
        """A hint: what to think about, not the code."""
        return _Shown(f"Hint for {self.id} ({self.signature}):\n{self.hint_text}")

    def solution(self) -> str:
        """The library's own code that solves it, read from its source file."""
        parts = []
        for path in (self.reference_path, *self.see_also):
            obj = _resolve(path)
            obj = getattr(obj, "func", obj)  # a functools.partial shows its function
            where = inspect.getsourcefile(obj) or "?"
            where = where[where.rfind("cxrlearn"):] if "cxrlearn" in where else where
            parts.append(f"# {path.replace(':', '.')}  ({where})\n"
                         + inspect.getsource(obj).rstrip())
        return _Shown("\n\n".join(parts))

    def _repr_markdown_(self) -> str:
        return f"**{self.id}** `{self.signature}`: {self.summary}"

    def __repr__(self) -> str:
        return f"Exercise({self.id}: {self.signature})"

    # -- checking ------------------------------------------------------------------------

    def check(self, answer: Callable) -> Verdict:
        """Check `answer` against the reference; returns (and records) the verdict."""
        verdict = self._check(answer)
        _record(verdict)
        return verdict

    def _args(self, case: Any) -> tuple:
        return self.build(case) if self.build else copy.deepcopy(tuple(case))

    def _run(self, fn: Callable, args: tuple) -> Any:
        return self.run(fn, args) if self.run else _call(fn, *args)

    def _outcome(self, answer: Callable, case: Any) -> _Failure | None:
        try:
            got = call_with_time_limit(lambda: self._run(answer, self._args(case)))
        except _TimeLimit:
            return _Failure("timeout")
        except _Unsolved:
            return _Failure("unsolved", "returns None")
        except NotImplementedError as e:
            return _Failure("unsolved", "raises NotImplementedError", got=e)
        except Exception as e:  # any fault of the answer becomes a verdict
            return _Failure("raised", f"{type(e).__name__}: {_one_line(str(e))}".rstrip(": "))
        reference = functools.partial(self.reference, **self.reference_kwargs)
        want = self._run(reference, self._args(case))
        mismatch = self.compare(got, want, case)
        if mismatch is None:
            return None
        return _Failure(mismatch.kind, mismatch.text,
                        got if mismatch.got is None else mismatch.got,
                        want if mismatch.want is None else mismatch.want)

    def _describe(self, case: Any) -> list[str]:
        if self.describe:
            return self.describe(case)
        return [f"{n} = {show(v)}" for n, v in zip(self._arg_names, case, strict=False)]

    def _check(self, answer: Callable) -> Verdict:
        if not callable(answer):
            return self._verdict(FAILED, f"✗ {self.id}: check() takes your function "
                                         f"{self.name} itself, got {_type_name(answer)}")
        with _quiet():
            probe = self._outcome(answer, self.edge_cases[0][1])
            if probe is not None and probe.kind == "unsolved":
                why = ("still raises NotImplementedError" if probe.got is not None
                       else "returns None (is a `return` missing?)")
                name = getattr(answer, "__name__", "")
                name = name if name.isidentifier() else self.name
                return self._verdict(UNSOLVED, f"· {self.id}: not solved yet: {name} "
                                               f"{why}. Write it, run its cell, then this one. "
                                               f"Stuck? EXERCISES[\"{self.id}\"].hint()")
            if probe is not None and probe.kind == "timeout":  # never run it again
                found = (self.edge_cases[0][1], probe, self.edge_cases[0][0])
            else:
                found = self._search(answer)
            if found is None:
                for label, case in self.edge_cases:
                    failure = self._outcome(answer, case)
                    if failure is not None:
                        found = (case, failure, label)
                        break
        if found is None:
            labels = ", ".join(label for label, _ in self.edge_cases)
            return self._verdict(PASSED, f"✓ {self.id} passed: {self.name} agrees with "
                                         f"{self.reference_path.replace(':', '.')} on generated "
                                         f"inputs and on the edge cases ({labels}). "
                                         f"Tolerance: {self.tolerance}.")
        return self._verdict(FAILED, self._failure_message(*found))

    def _search(self, answer: Callable) -> tuple[Any, _Failure, str | None] | None:
        """The smallest generated input on which the answer fails, with its failure."""
        from hypothesis import HealthCheck, Phase, find, settings
        from hypothesis.errors import NoSuchExample, Unsatisfiable

        stopped: list[tuple[Any, _Failure]] = []

        def fails(case: Any) -> bool:
            if stopped:  # after a timeout, run nothing more: answer every remaining call
                return False
            failure = self._outcome(answer, case)
            if failure is not None and failure.kind == "timeout":
                stopped.append((case, failure))
                return False
            return failure is not None

        config = settings(derandomize=True, database=None, deadline=None,
                          max_examples=self.max_examples, print_blob=False,
                          suppress_health_check=list(HealthCheck),
                          phases=(Phase.generate, Phase.shrink))
        try:
            case = find(self.cases, fails, settings=config)
        except (NoSuchExample, Unsatisfiable):
            return (stopped[0][0], stopped[0][1], None) if stopped else None
        if stopped:
            return stopped[0][0], stopped[0][1], None
        failure = self._outcome(answer, case)
        return None if failure is None else (case, failure, None)

    def _failure_message(self, case: Any, failure: _Failure, label: str | None) -> str:
        given = self._describe(case)
        on = f" (edge case: {label})" if label else ""
        if failure.kind != "value":  # one line: raised, timed out, wrong type or shape
            what = {"raised": f"raised {failure.text}",
                    "unsolved": ("returned None" if failure.got is None
                                 else "raised NotImplementedError"),
                    "timeout": f"ran longer than {TIME_LIMIT:g} s and was stopped "
                               "(an endless loop?)"}.get(failure.kind, failure.text)
            return f"✗ {self.id}: your {self.name} {what}, on {'; '.join(given)}{on}"
        lines = [f"✗ {self.id}: not yet. The smallest input where your {self.name} differs "
                 f"from the library's{on}:"]
        lines += [f"    {g}" for g in given]
        lines += [f"  yours:    {show(failure.got)}",
                  f"  expected: {show(failure.want)}",
                  f"  where: {failure.text}",
                  f"  Stuck? EXERCISES[\"{self.id}\"].hint()"]
        return "\n".join(lines)

    def _verdict(self, status: str, message: str) -> Verdict:
        return Verdict(self.id, status, message)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet():
    """Swallow what the answer prints and warns while it runs many times."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _record(verdict: Verdict) -> None:
    RESULTS[verdict.exercise] = verdict
    target = os.environ.get(VERDICTS_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": verdict.exercise, "status": verdict.status,
                                "message": verdict.message}) + "\n")
