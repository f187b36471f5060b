"""Helpers for tests that start processes talking over TCP (DistributedDataParallel with gloo, torchrun).

Such a test must end, pass or fail, in bounded time: a process group whose members cannot reach each other
waits for its timeout, and ``subprocess.run(timeout=...)`` kills only the direct child while its grandchildren
(torchrun's workers) keep the output pipes open. So commands run in their own process group, which is killed
as a whole on time-out, and the collectives' own timeout is short (``SARCOMAKIT_DIST_TIMEOUT_S``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import pytest

# a collective waits this long for the other processes before failing the run (the library's default is 30 min)
COLLECTIVE_TIMEOUT_S = "120"


def loopback_tcp_works(timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to 127.0.0.1 is accepted here (gloo needs it; some sandboxes forbid it)."""
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=timeout_s):
                server.settimeout(timeout_s)
                peer, _ = server.accept()
                peer.close()
        return True
    except OSError:
        return False


needs_loopback_tcp = pytest.mark.skipif(not loopback_tcp_works(),
                                        reason="this machine refuses TCP connections to 127.0.0.1 (gloo needs them)")


def distributed_test_env(**extra: str) -> dict[str, str]:
    """The environment for a multi-process command: one thread per process and a short collective timeout."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "SARCOMAKIT_DIST_TIMEOUT_S": COLLECTIVE_TIMEOUT_S, **extra}


def run_bounded(command: Sequence[str], env: Mapping[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on time-out kill the whole group and fail the test with its
    output so far."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(env), start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command[:6])} ... did not finish in {timeout_s:.0f} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
