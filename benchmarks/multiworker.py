"""The bench's MultiWorkerMirroredStrategy rows: two local worker processes,
one replica each, wired by TF_CONFIG to 127.0.0.1 ports.

Both workers build and time the same candidates in the same order (every
training step is a collective, so they must run step for step); the chief's
(worker 0's) timings are the result. Keras 3's `fit` does not work under
this strategy (docs/distributed.md), so the step is the custom one of
`timing.custom_train_step`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

WORKERS = 2


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def run(command, env, timeout=1800):
    """Run `command` as each of the workers; the chief's standard output."""
    ports = free_ports(WORKERS)
    processes = [
        subprocess.Popen(
            command,
            env=dict(env, TF_CONFIG=tf_config(ports, index), CUDA_VISIBLE_DEVICES=""),
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(WORKERS)
    ]
    outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    failed = [p.returncode for p in processes if p.returncode]
    if failed:
        raise RuntimeError(f"a multi-worker bench process failed (exit codes {failed})")
    return outputs[0]


def strategy():
    """The workers' strategy (TF_CONFIG set by `run`), made before
    TensorFlow initializes its devices."""
    import tensorflow as tf

    assert os.environ.get("TF_CONFIG"), "a multi-worker bench process needs TF_CONFIG"
    return tf.distribute.MultiWorkerMirroredStrategy()
