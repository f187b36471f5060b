"""Fine-tuning in a background process, with MONAI Label's ``/train/`` status shape.

One training at a time: :meth:`TrainManager.start` launches ``python -m sarcomakit.server.finetune`` as a
child process (its own interpreter, so training neither holds the GIL nor can crash the server), a thread
collects its output lines, and when it exits with status 0 the new weights are handed to ``on_done``
(the server swaps its model). :meth:`stop` terminates the child. Statuses are MONAI Label's:
``RUNNING``, ``DONE``, ``ERROR``, ``STOPPED``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class TrainManager:
    """Runs and tracks fine-tuning processes (see the module docstring).

    Args:
        studies: the datastore folder (trained on, and where the new model folders go under ``.sarcomakit/models``).
        on_done: called with the new run folder when a training succeeds.
        python: the interpreter of the child (this one by default).
    """

    def __init__(self, studies: Path, on_done: Callable[[Path], None], python: str = sys.executable) -> None:
        self.studies = Path(studies)
        self.on_done = on_done
        self.python = python
        self._tasks: list[dict[str, Any]] = []
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._finished.set()

    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def start(self, model_spec: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Start fine-tuning ``model_spec``; None when a training is already running."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return None
            task_id = uuid.uuid4().hex
            out = self.studies / ".sarcomakit" / "models" / f"{datetime.now():%Y%m%d-%H%M%S}-{task_id[:6]}"
            command = [self.python, "-m", "sarcomakit.server.finetune", "--studies", str(self.studies),
                       "--model", model_spec, "--out", str(out), "--steps", str(int(params.get("max_steps", 50))),
                       "--lr", str(float(params.get("learning_rate", 2e-4))),
                       "--device", str(params.get("device", "cpu"))]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            src = str(Path(__file__).resolve().parents[2])  # the sarcomakit this server runs, also in the child
            env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                       start_new_session=True)
            task: dict[str, Any] = {"id": task_id, "name": "train", "status": "RUNNING", "start_ts": _now(),
                                    "request": {"model": model_spec, **params}, "details": deque(maxlen=20),
                                    "result": None, "output": str(out), "pid": process.pid}
            self._tasks.append(task)
            self._process = process
            self._finished.clear()
        threading.Thread(target=self._follow, args=(process, task, out), daemon=True).start()
        return self._public(task)

    def _follow(self, process: subprocess.Popen[str], task: dict[str, Any], out: Path) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            task["details"].append(line.rstrip())
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "train":
                task["progress"] = event
        code = process.wait()
        with self._lock:
            if task["status"] == "RUNNING":
                task["status"] = "DONE" if code == 0 else "ERROR"
            task["end_ts"] = _now()
            task["result"] = {"returncode": code}
        if task["status"] == "DONE":
            try:
                self.on_done(out)
                task["result"]["model"] = str(out)
            except Exception as error:  # a bad run folder must not take the server down
                task["status"] = "ERROR"
                task["details"].append(f"could not load the new weights: {error}")
        self._finished.set()

    def stop(self) -> dict[str, Any]:
        """Terminate the running training (MONAI Label's ``DELETE /train/``); its status becomes STOPPED."""
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                return {}
            task = self._tasks[-1]
            task["status"] = "STOPPED"
            task["end_ts"] = _now()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        return self._public(task)

    def status(self, all_tasks: bool = False) -> dict[str, Any] | list[dict[str, Any]] | None:
        """The last task (or all), None when none has run."""
        with self._lock:
            if not self._tasks:
                return None
            return [self._public(t) for t in self._tasks] if all_tasks else self._public(self._tasks[-1])

    def wait(self, timeout: float) -> bool:
        """Wait until the last training has finished and its weights are in use; True when it has."""
        return self._finished.wait(timeout)

    @staticmethod
    def _public(task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "details": list(task["details"])}
