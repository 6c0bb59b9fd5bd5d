"""scripts/make_figures.py: it draws both documentation figures from a small
Monte Carlo and a demo results file, the Lp scale estimates it reports are
Gaussian-consistent, and a missing results file is skipped with a message."""

import json
import math
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "make_figures.py")
sys.path.insert(0, os.path.join(ROOT, "examples"))

import digits_compare  # noqa: E402

# Enough Gaussian batches that the mean ratio's standard error is ~0.002
# (the ratio's spread is ~0.06 at n = 128), so a 3% tolerance is robust.
SMALL = ["--n", "128", "--trials", "1000", "--sweep", "16", "64", "--sweep-trials", "200"]
LEARNING_RATES = [0.1, 1.0]


def write_demo_results(path):
    """A results.json in the demo's format (as `digits_compare.main` writes
    it), one diverged run included."""
    args = digits_compare.parse_args(
        ["--methods", "plain", "cwn", "--seeds", "2", "--epochs", "4", "--learning-rates"]
        + [str(lr) for lr in LEARNING_RATES]
    )
    rng = np.random.default_rng(0)
    results = {}
    for lr in LEARNING_RATES:
        for method in args.methods:
            for _ in range(args.seeds):
                losses = (2.3 * np.exp(-np.arange(args.epochs) * rng.uniform(0.2, 0.6))).tolist()
                results.setdefault((method, lr), []).append(
                    {"losses": losses, "test_accuracy": 0.9, "seconds": 0.1}
                )
    results[("plain", 1.0)][0]["losses"][2:] = [math.nan, math.nan]
    rows, _ = digits_compare.summarize(results, args.epochs)
    with open(path, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "rows": rows,
                "runs": {f"{m}@{lr:g}": r for (m, lr), r in results.items()},
            },
            f,
            indent=1,
        )


def run_script(*args):
    result = subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),  # KERAS_BACKEND as the test session has it
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def read_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert np.std(image[..., :3]) > 0.01  # not a blank canvas
    return image


def test_both_figures_and_consistent_scales(tmp_path):
    results = tmp_path / "results.json"
    write_demo_results(results)
    out = tmp_path / "img"
    stdout = run_script(*SMALL, "--digits-results", str(results), "--out-dir", str(out))

    # The Lp figure: a histogram panel and a sweep panel side by side.
    image = read_png(out / "lp_scale_distribution.png")
    assert 1.5 < image.shape[1] / image.shape[0] < 4
    # The loss curves: one panel per learning rate, the legend below them.
    image = read_png(out / "digits_loss_curves.png")
    assert 1.3 < image.shape[1] / image.shape[0] < 3

    summary = json.loads((out / "lp_scale_distribution.json").read_text())
    assert summary["n"] == 128
    ratios = summary["ratios"]
    assert set(ratios) == {"L1", "L2", "Linf", "top10"}
    for name in ("L1", "L2"):  # C_1 and C_2 make these Gaussian-consistent
        assert ratios[name]["trials"] == 1000
        assert abs(ratios[name]["mean"] - 1.0) < 0.03, (name, ratios[name])
        assert 0.02 < ratios[name]["std"] < 0.15
    # The maximum's mean stays within the Norm-matters supplement's bounds.
    assert 0.740 < ratios["Linf"]["mean"] < 1.543
    assert set(summary["sweep"]) == {"16", "64"}
    # The table printed to stdout carries the same numbers.
    for name in ("L1", "L2"):
        line = next(ln for ln in stdout.splitlines() if ln.startswith(name + " "))
        assert abs(float(line.split()[1]) - ratios[name]["mean"]) < 6e-5
    assert "digits_loss_curves.png" in stdout


def test_missing_results_skip_the_loss_curves(tmp_path):
    missing = tmp_path / "nothing" / "results.json"
    out = tmp_path / "img"
    stdout = run_script(
        "--n",
        "64",
        "--trials",
        "50",
        "--sweep",
        "--digits-results",
        str(missing),
        "--out-dir",
        str(out),
    )
    assert f"digits results not found: {missing}" in stdout
    assert (out / "lp_scale_distribution.png").exists()
    assert not (out / "digits_loss_curves.png").exists()


def test_help_documents_the_skip():
    result = subprocess.run(
        [sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--digits-results" in result.stdout and "--out-dir" in result.stdout
    assert "skipped" in result.stdout
