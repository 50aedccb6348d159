"""The long tier: digits zoo specs at their full step counts keep BENCHMARKS.md's accuracies.

Slow (about a minute on 2 cores): run with ``pytest --slow``. The short tier trains every zoo
spec for a few steps instead (tests/zoo/test_zoo_specs.py). Thresholds sit below the seed-0
values in BENCHMARKS.md by about three of its standard deviations; the scratch student must
stay below the KD methods, which is what the low-label setting measures.
"""

from __future__ import annotations

import pytest
from helpers import QUIET

from dgraph.api import train

LOW = ["nodes.data.params.labelled=50"]

# spec -> lowest acceptable held-out accuracy of its student with 50 labels (seed 0)
LOW_LABEL_FLOOR = {
    "kd": 0.90,
    "fitnet": 0.92,
    "rkd": 0.87,
    "dkd": 0.87,
    "multi_teacher": 0.91,
}


@pytest.mark.slow
def test_low_label_kd_methods_beat_the_scratch_student(tmp_path):
    for teacher in ("teacher_digits", "teacher_digits_cnn"):
        summary = train(teacher, out=tmp_path / teacher, **QUIET)
        assert summary["teacher/accuracy"] > 0.95, (teacher, summary)
    scratch = train("student_digits", out=tmp_path / "scratch", overrides=LOW, **QUIET)
    assert scratch["student/accuracy"] < 0.86
    for spec, floor in LOW_LABEL_FLOOR.items():
        summary = train(spec, out=tmp_path / spec, overrides=LOW, **QUIET)
        accuracy = summary["student/accuracy"]
        assert accuracy > floor, f"{spec}: {accuracy:.3f} (floor {floor})"
        assert accuracy > scratch["student/accuracy"] + 0.05, spec
