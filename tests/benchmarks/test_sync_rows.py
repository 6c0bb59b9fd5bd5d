"""The synchronized rows of benchmarks/bench.py, report side: their own
targets (not the single-device ones), their section headings, `--rerender`
of results with and without them, which rows each flag runs, and one worker
process per backend and replica count. Nothing is timed."""

import json
import os
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402
import candidates  # noqa: E402
import report  # noqa: E402
from test_benchmarks import META, RESULTS, row, target_rows  # noqa: E402


def sync_configuration(backend, ratios, memory=None, processes=False):
    """A synchronized configuration as a worker writes it: `ratios` are the
    train ratios of the candidates after the Keras baseline."""
    names = ["LpBN p=2", "LpBN p=1", "LinfBN", "LinfBN top-10", "MeanOnlyBN"]
    rows = [row("keras BatchNormalization", 1.0, group=candidates.SYNC_GROUP, memory=memory)]
    rows += [
        row(name, ratio, group=candidates.SYNC_GROUP, memory=memory)
        for name, ratio in zip(names, ratios, strict=True)
    ]
    for r in rows:
        r["infer_s"] = r["infer_ratio"] = None  # training only
    return {
        "backend": backend,
        "model": "cnn",
        "jit": backend == "jax",
        "policy": "float32",
        "replicas": 2,
        "distribution": report.DISTRIBUTIONS[backend, processes],
        "rows": rows,
    }


SYNC_RESULTS = [
    # p=2 over its 1.00 limit; L-inf the worst of the 1.05 group, over it.
    sync_configuration("tensorflow", [1.01, 1.02, 1.07, 1.10, 0.8], memory=1.5),
    sync_configuration("jax", [0.99, 1.04, 1.0, 1.2, 0.9], memory=1.0),
    sync_configuration("tensorflow", [0.7, 0.9, 0.8, 1.12, 0.6], processes=True),
]


def test_sync_rows_meet_their_own_targets():
    table = target_rows(report.target_summary(SYNC_RESULTS))
    assert table["synchronized LpBN p=2 training step"] == (
        "1.010 (cnn tensorflow jit=False float32 2 replicas); "
        "0.990 (cnn jax jit=True float32 2 replicas); "
        "0.700 (cnn tensorflow jit=False float32 2 replicas in 2 processes)",
        "2 of 3",
    )
    worst, met = table["synchronized LpBN p=1, L-inf and mean-only training step"]
    assert met == "2 of 3"
    assert worst.startswith("1.070 (cnn tensorflow jit=False float32 2 replicas LinfBN)")
    assert "1.040 (cnn jax jit=True float32 2 replicas LpBN p=1)" in worst
    assert "0.900 (cnn tensorflow jit=False float32 2 replicas in 2 processes LpBN p=1)" in worst
    # 1.10, 1.20 and 1.12 against 1.15
    assert table["synchronized L-inf top-10 training step"][1] == "2 of 3"
    # The single-device targets do not read the synchronized rows, and their
    # memory (1.5 on TensorFlow here) has no target.
    assert set(table) == {
        "synchronized LpBN p=2 training step",
        "synchronized LpBN p=1, L-inf and mean-only training step",
        "synchronized L-inf top-10 training step",
    }


def test_sync_rows_leave_the_single_device_targets_as_they_were():
    alone = target_rows(report.target_summary(RESULTS))
    together = target_rows(report.target_summary(RESULTS + SYNC_RESULTS))
    assert {label: together[label] for label in alone} == alone
    assert len(together) == len(alone) + 3


def test_report_names_the_distribution_of_sync_rows():
    page = report.format_report(RESULTS + SYNC_RESULTS, META)
    assert (
        "## cnn, tensorflow, jit_compile=False, float32, synchronized on 2 replicas "
        "(MirroredStrategy over logical CPUs)" in page
    )
    assert "synchronized on 2 replicas (DataParallel over host devices)" in page
    assert "synchronized on 2 replicas (MultiWorkerMirroredStrategy, two local processes)" in page
    assert "## mlp, jax, jit_compile=True, float32\n" in page  # single device: as before
    assert report.SYNC_HEADER in page
    assert "Synchronized rows (median of 20 timed steps)" in page  # META's: no steps saved
    assert "| synchronized batch norm | LinfBN top-10 | 1100.0 | 1.100 | – | – | 1.500 |" in page


def test_a_report_without_sync_rows_says_nothing_of_them():
    """Results saved before the synchronized rows existed render without
    their header; the memory sentence names each backend's source."""
    page = report.format_report(RESULTS, META)
    assert "XLA's planned bytes on JAX" in page
    assert "requested from TensorFlow's allocator" in page
    assert "synchronized" not in page


@pytest.mark.parametrize("results", [RESULTS, RESULTS + SYNC_RESULTS], ids=["older", "sync"])
def test_rerender_reads_json_with_and_without_sync_rows(tmp_path, results):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"meta": META, "results": results}))
    output = tmp_path / "performance.md"
    assert bench.main(["--rerender", str(saved), "--output", str(output), "--notes", "none"]) == 0
    page = output.read_text()
    assert ("synchronized LpBN p=2 training step" in page) == (results is not RESULTS)
    assert json.loads((tmp_path / "performance.json").read_text())["results"] == results


def matrix(*argv):
    return bench.chosen_matrix(bench.build_parser().parse_args(list(argv)))


def test_the_flags_choose_the_sync_rows():
    assert set(bench.SYNC_MATRIX) <= set(matrix())  # in the default `make bench`
    assert set(bench.SYNC_MATRIX) <= set(matrix("--extended"))
    assert set(bench.SYNC_MATRIX) <= set(matrix("--full"))
    assert matrix("--sync") == bench.SYNC_MATRIX
    assert matrix("--sync", "--backends", "jax") == [bench.Config("jax", "cnn", True, "float32", 2)]
    assert [c.workers for c in matrix("--sync", "--backends", "tensorflow")] == [1, 2]
    assert all(c.replicas == 1 for c in matrix("--models", "mlp", "resnet20"))
    assert all(c.replicas == 1 for c in matrix("--full") if c.model != "cnn")
    with pytest.raises(SystemExit):
        matrix("--sync", "--extended")


def test_each_configuration_gets_a_worker(monkeypatch):
    """Every configuration runs in a worker of its own: the synchronized
    rows' devices are fixed when the backend starts (JAX's host devices
    through XLA_FLAGS), and reading TensorFlow's memory slows the rest of a
    process."""
    calls = []

    def fake_run(command, env, **kwargs):
        configs = json.loads(command[command.index("--worker") + 1])
        calls.append((configs, env))
        result = [{"backend": c[0], "model": c[1], "rows": []} for c in configs]
        return types.SimpleNamespace(stdout=json.dumps(result))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(
        bench.multiworker, "run", lambda command, env: fake_run(command, env).stdout
    )
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    args = bench.build_parser().parse_args([])
    results = bench.measure(bench.chosen_matrix(args), args)
    assert all(len(configs) == 1 for configs, _ in calls)
    ran = [bench.Config(*configs[0]) for configs, _ in calls]
    assert sorted(ran) == sorted(bench.DEFAULT_MATRIX)
    for config, (_, env) in zip(ran, calls, strict=True):
        assert env["KERAS_BACKEND"] == config.backend
        jax_replicas = config.backend == "jax" and config.replicas > 1
        flag = "--xla_force_host_platform_device_count=2" if jax_replicas else None
        assert env.get("XLA_FLAGS") == flag
    assert len(results) == len(bench.DEFAULT_MATRIX)


def test_group_rows_takes_ratios_against_the_first_candidate():
    measured = {
        "keras BatchNormalization": {"train_s": 0.02, "step_bytes": 4_000_000},
        "LpBN p=2": {"train_s": 0.021, "step_bytes": 5_000_000},
        "MeanOnlyBN": {"train_s": 0.018, "step_bytes": None},  # no memory read
    }
    rows = report.group_rows(candidates.SYNC_GROUP, measured)
    assert [r["baseline"] for r in rows] == ["keras BatchNormalization"] * 3
    assert rows[1]["train_ratio"] == pytest.approx(1.05)
    assert rows[1]["memory_ratio"] == pytest.approx(1.25)
    assert rows[2]["memory_ratio"] is None and rows[2]["infer_ratio"] is None
