"""The report side of benchmarks/bench.py: the target table takes the worst
ratio per configuration and counts the limits met, and `--rerender` rewrites
a report from saved numbers without measuring anything."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench  # noqa: E402
import report  # noqa: E402


def row(candidate, train=None, infer=None, memory=None, group="batch norm"):
    return {
        "group": group,
        "candidate": candidate,
        "baseline": "keras BatchNormalization",
        "train_s": train,
        "infer_s": infer,
        "step_bytes": None,
        "train_ratio": train,
        "infer_ratio": infer,
        "memory_ratio": memory,
    }


def configuration(backend, rows, jit=True):
    return {"backend": backend, "model": "mlp", "jit": jit, "policy": "float32", "rows": rows}


RESULTS = [
    configuration(
        "tensorflow",
        [
            row("keras BatchNormalization", 1.0, 1.0),
            row("LpBN p=2", 1.02, 1.0),
            row("LpBN p=1", 1.05, 1.0),
            row("LpBN p=inf", 1.09, 1.0, 1.3),  # over the 1.08 limit, the worst of the two
            row("plain", 1.0, 1.0, group="weight norm"),
            row("CenteredWeightNorm", 1.01, 1.0, group="weight norm"),
            row("WeightNormalization", 1.04, 1.0, group="weight norm"),
            row("keras SpectralNormalization", 1.03, 1.0, group="weight norm"),
        ],
    ),
    configuration(
        "jax",
        [
            row("keras BatchNormalization", 1.0, 1.0, 1.0),
            row("LpBN p=2", 1.04, 1.0, 1.0),  # over 1.03
            row("LpBN p=1", 1.01, 1.0, 1.2),  # memory over 1.05
            row("plain", 1.0, 1.0, 1.0, group="weight norm"),
            row("CenteredWeightNorm", 0.99, 1.0, 1.05, group="weight norm"),
            # Keras's layer: its memory (1.3) is not a tfnorms target.
            row("keras SpectralNormalization", 1.2, 1.0, 1.3, group="weight norm"),
        ],
    ),
    configuration(
        "tensorflow",
        [
            row("plain", 1.0, 1.0, group="weight norm"),
            row("CenteredWeightNorm", 1.06, 1.0, group="weight norm"),
            row("BoundedWeightNorm", 1.07, 1.0, group="weight norm"),
            row("keras SpectralNormalization", 1.065, 1.0, group="weight norm"),
        ],
        jit=False,
    ),
]
META = {
    "date": "2026-12-03",
    "machine": "x86_64, 2 CPU cores, Linux",
    "python": "3.11",
    "keras": "3",
    "tensorflow": "2",
    "jax": "0",
    "steps": 20,
    "warmup": 3,
}


def target_rows(lines):
    """{target label: (worst-ratio cell, met cell)} of the Markdown table."""
    table = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("target", "---"):
            table[cells[0]] = (cells[2], cells[3])
    return table


def test_target_summary_takes_the_worst_ratio_and_counts_the_limits_met():
    table = target_rows(report.target_summary(RESULTS))
    worst, met = table["LpBN p=2 training step"]
    assert met == "1 of 2"
    assert worst.startswith("1.020 (mlp tensorflow") and "1.040 (mlp jax" in worst
    worst, met = table["LpBN p=1 and p=inf training step"]
    assert met == "1 of 2"
    assert "1.090 (mlp tensorflow jit=True float32 LpBN p=inf)" in worst
    # Per backend: WN's 1.04 is within TensorFlow jit's 1.05, CWN's 0.99 within JAX's 1.03.
    assert table["CWN, WN, BWN training step (TensorFlow, jit_compile)"][1] == "1 of 1"
    assert table["CWN, WN, BWN training step (JAX)"][1] == "1 of 1"
    # Without jit the limit is SpectralNormalization's own ratio there: BWN's
    # 1.07 is over its 1.065.
    assert table["CWN, WN, BWN training step (TensorFlow without jit)"] == (
        "1.070 (mlp tensorflow jit=False float32 BoundedWeightNorm) [1.065]",
        "0 of 1",
    )
    assert "CWN, WN, BWN training step (PyTorch)" not in table  # no PyTorch row ran
    # TensorFlow's memory column (p=inf's 1.3) has no target: JAX's alone.
    assert table["training-step memory (JAX)"] == (
        "1.200 (mlp jax jit=True float32 LpBN p=1)",
        "0 of 1",
    )
    # No top-k candidate ran: no row for it rather than an empty one.
    assert "LpBN top-10 training step" not in table


def test_rerender_rewrites_the_report_from_saved_numbers(tmp_path):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"meta": META, "results": RESULTS}))
    notes = tmp_path / "notes.md"
    notes.write_text("## About this run\n\nHand-written findings.\n")
    output = tmp_path / "performance.md"
    assert (
        bench.main(["--rerender", str(saved), "--output", str(output), "--notes", str(notes)]) == 0
    )
    page = output.read_text()
    assert page.startswith("# Performance")
    assert "## mlp, jax, jit_compile=True, float32" in page
    assert "| batch norm | LpBN p=1 |" in page
    assert page.rstrip().endswith("Hand-written findings.")
    assert json.loads((tmp_path / "performance.json").read_text())["results"] == RESULTS

    bench.main(["--rerender", str(saved), "--output", str(output), "--notes", "none"])
    assert "Hand-written findings." not in output.read_text()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5"])
    with pytest.raises(SystemExit):
        bench.main(["--notes", str(tmp_path / "missing.md"), "--rerender", "x.json"])


def test_the_default_notes_are_optional(tmp_path, monkeypatch):
    """A checkout without benchmarks/performance_notes.md still reports."""
    monkeypatch.setattr(bench, "NOTES", str(tmp_path / "absent.md"))
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"meta": META, "results": RESULTS}))
    output = tmp_path / "performance.md"
    assert bench.main(["--rerender", str(saved), "--output", str(output)]) == 0
    assert "## Targets" in output.read_text()
