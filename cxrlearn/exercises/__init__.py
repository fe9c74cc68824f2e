"""Exercises that check themselves: the student writes a piece, the library checks it.

Every lesson ends with exercises: write a function that the lesson just explained (a
contrast stretch, a residual block's forward, a training step, the Wilson interval, the
Grad-CAM map, a rank's shard of the data...), then check it:

    from cxrlearn.exercises import EXERCISES
    EXERCISES["01.stretch"].check(stretch)      # passed, or the smallest input that fails
    EXERCISES["01.stretch"].hint()              # a nudge
    EXERCISES["01.stretch"].solution()          # the library's own code, from its source

`check` compares the answer with the library function that solves the same problem
(`Exercise.reference`), on inputs generated with hypothesis and on hand-picked edge cases;
see `cxrlearn.exercises.core`. Ids are "NN.name": the lesson's number, then the name of the
function to write. Instructors grade a class's notebooks with `cxrlearn grade`.

Importing this package imports torch, numpy and hypothesis, not matplotlib or FastAPI.

Each lesson's exercises live in `lessonNN.py` beside this file; every lesson ends with them.
"""

from __future__ import annotations

from cxrlearn.exercises import (
    lesson01,
    lesson02,
    lesson03,
    lesson04,
    lesson05,
    lesson06,
    lesson07,
    lesson08,
    lesson09,
)
from cxrlearn.exercises.core import FAILED, PASSED, RESULTS, UNSOLVED, Exercise, Verdict

__all__ = ["EXERCISES", "Exercise", "Verdict", "RESULTS", "PASSED", "FAILED", "UNSOLVED"]

EXERCISES: dict[str, Exercise] = {
    exercise.id: exercise
    for module in (lesson01, lesson02, lesson03, lesson04, lesson05, lesson06, lesson07,
                   lesson08, lesson09)
    for exercise in module.EXERCISES
}
"""Every exercise, by id, in lesson order."""
