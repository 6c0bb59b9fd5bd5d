"""The demo (`make demo`): it runs end to end on a tiny budget and reports
divergence honestly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples"
)
sys.path.insert(0, EXAMPLES)

import digits_compare  # noqa: E402


def test_help_lists_the_methods():
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "digits_compare.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for method in digits_compare.METHODS:
        assert method in result.stdout


def test_bad_arguments_exit_with_a_message():
    with pytest.raises(SystemExit):
        digits_compare.parse_args(["--learning-rates", "-1"])
    with pytest.raises(SystemExit):
        digits_compare.parse_args(["--methods", "nosuch"])


def test_demo_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "digits"
    code = digits_compare.main(
        [
            "--methods",
            "plain",
            "cwn",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--learning-rates",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("table.md", "results.json", "loss_curves.png"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    methods = {row["method"] for row in results["rows"]}
    assert methods == {"plain", "cwn"}
    for row in results["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert np.isfinite(row["loss@2"])


def test_every_method_builds_a_model_that_runs():
    x = np.zeros((3, 64), "float32")
    for method in digits_compare.METHODS:
        model = digits_compare.build_mlp(method)
        assert model(x).shape == (3, 10), method


def test_summary_reports_divergence_instead_of_hiding_it():
    results = {
        ("wn", 1.0): [{"losses": [2.0, float("nan")], "test_accuracy": 0.1, "seconds": 1.0}],
        ("cwn", 1.0): [{"losses": [2.0, 0.5], "test_accuracy": 0.9, "seconds": 1.0}],
    }
    rows, marks = digits_compare.summarize(results, epochs=2)
    by_method = {row["method"]: row for row in rows}
    assert by_method["wn"]["diverged"] == 1 and by_method["wn"]["loss@2"] is None
    assert by_method["cwn"]["loss@2"] == 0.5
    table = digits_compare.format_table(rows, marks)
    assert "diverged" in table
    lines = digits_compare.best_per_learning_rate(rows, 2)
    assert lines == ["lr 1: final training loss cwn 0.5"]
