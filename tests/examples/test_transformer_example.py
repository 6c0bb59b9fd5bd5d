"""The Transformer example (examples/transformer_lp_layernorm.py) on a tiny
budget: it runs end to end, prints the per-epoch table, writes its JSON, and
its L2 run is Keras's LayerNormalization run (same weights, same batches)."""

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

import transformer_lp_layernorm as example  # noqa: E402

# fmt: off
TINY = [
    "--epochs", "2", "--train-size", "96", "--val-size", "16", "--length", "6",
    "--vocab", "5", "--width", "8", "--heads", "2", "--blocks", "1", "--hidden", "8",
    "--batch-size", "32",
]
# fmt: on


def test_help_lists_the_normalizations():
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "transformer_lp_layernorm.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in example.NORMS:
        assert name in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--norms", "l3"],
        ["--epochs", "0"],
        ["--width", "10", "--heads", "4"],
        ["--learning-rate", "-1"],
        ["--norms", "l1", "l1"],
    ],
)
def test_bad_arguments_exit_with_a_message(argv):
    with pytest.raises(SystemExit):
        example.parse_args(argv)


def test_runs_and_prints_the_loss_table(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = example.main([*TINY, "--norms", "l2", "l1", "keras", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| epoch | l2 loss | l1 loss | keras loss |" in printed
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"l2", "l1", "keras"}
    for history in results.values():
        for key in ("loss", "val_loss", "val_token_accuracy", "val_sequence_accuracy"):
            assert len(history[key]) == 2 and np.all(np.isfinite(history[key]))
    # Same initial weights and batches: p=2 is Keras's layer norm, L1 is not.
    np.testing.assert_allclose(results["l2"]["loss"], results["keras"]["loss"], rtol=1e-4)
    assert results["l1"]["loss"] != results["l2"]["loss"]


def test_every_normalization_and_placement_builds():
    x, y = example.sorting_data(3, 6, 5, seed=0)
    assert np.all(np.diff(y, axis=1) >= 0) and np.all(np.sort(x, axis=1) == y)
    for norm in example.NORMS:
        for placement in ("post", "pre"):
            model = example.build_model(norm, 6, 5, 8, 2, 1, 8, placement)
            assert model(x).shape == (3, 6, 5), (norm, placement)
