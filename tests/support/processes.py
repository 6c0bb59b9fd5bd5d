"""Several local processes started together (the two-process distributed
tests): free ports to wire them, and one runner that waits for all of them
and fails with their logs."""

from __future__ import annotations

import socket
import subprocess


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while
    chosen, so that no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_together(runs, timeout=300):
    """Start every `(command, env)` of `runs` at once and wait for all; their
    outputs (stdout and stderr together). Fails, with the end of each failed
    process's log, if any exits with an error; kills what is left on a timeout."""
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command, env in runs
    ]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    failed = [
        f"process {i}:\n{log[-4000:]}"
        for i, (process, log) in enumerate(zip(processes, logs, strict=True))
        if process.returncode
    ]
    assert not failed, "\n".join(failed)
    return logs
