"""How does the annotation server hold up under concurrent annotators on localhost?

Usage: python benchmarks/bench_server_load.py [--clients 1,10,20,50] [--rounds 3] [--model random_walker]
                                              [--workers 2] [--shape 24,48,48]

A ``sarcomakit serve``-equivalent server (uvicorn, one process) runs in a child process; for each
concurrency level that many client threads each upload their own synthetic study (a bright ellipsoid at a
position of its own in noise), ask for ``--rounds`` masks from scribble points (MONAI Label's ``/infer``
with foreground and background voxel lists) and save the last mask as final. Each client checks that every
mask it gets has its image's shape and a Dice of at least 0.7 with its own reference: a mask computed on
another client's image (a mixed-up response) fails this, as the tumours do not overlap enough.

Reported per level: requests, failed requests, mixed-up masks, throughput (requests/s), p50/p95 latency of
``/infer`` seen by the client, the model's own latency (server side), the API's overhead (client round trip
minus the model's latency), upload and save latency, the server's peak resident memory and the image
sessions it holds at the end (bounded by ``max_sessions``). Appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import requests  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

SERVER = """
import sys, uvicorn
from sarcomakit.server import create_app
app = create_app(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[4]), log_level="warning")
"""


def study(seed: int, shape: tuple[int, int, int]) -> tuple[sitk.Image, np.ndarray]:
    """A bright ellipsoid at a random place of its own in noise, on an anisotropic grid."""
    rng = np.random.default_rng(seed)
    radii = np.asarray(shape) * np.array([0.22, 0.18, 0.18])
    centre = np.array([rng.uniform(r + 1, n - r - 2) for r, n in zip(radii, shape, strict=True)])
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    reference = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
    image = sitk.GetImageFromArray((100 + 60 * reference + rng.normal(0, 12, shape)).astype(np.float32))
    image.SetSpacing((0.9, 0.9, 2.5))
    return image, reference


def prompts(reference: np.ndarray) -> dict[str, list[list[int]]]:
    """Foreground points along the object's middle row of its largest slice, background points on the slice's border
    rows; ITK indices [i, j, k]."""
    z = int(np.argmax(reference.sum(axis=(1, 2))))
    ys, xs = np.nonzero(reference[z])
    y = int(np.median(ys))
    row = xs[ys == y]
    nx, ny = reference.shape[2], reference.shape[1]
    return {"foreground": [[int(x), y, z] for x in range(int(row.min()) + 1, int(row.max()))],
            "background": [[x, 1, z] for x in range(1, nx - 1)] + [[x, ny - 2, z] for x in range(1, nx - 1)]}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def read_mask(content: bytes, folder: Path) -> np.ndarray:
    path = folder / f"mask-{threading.get_ident()}.nii.gz"
    path.write_bytes(content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


class Client(threading.Thread):
    """One annotator: upload, ``rounds`` inferences, save; records latencies and checks every mask."""

    def __init__(self, url: str, image_id: str, seed: int, shape: tuple[int, int, int], rounds: int,
                 folder: Path, start: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.url, self.image_id, self.rounds, self.folder, self.barrier = url, image_id, rounds, folder, start
        image, self.reference = study(seed, shape)
        self.path = folder / f"{image_id}.nii.gz"
        sitk.WriteImage(image, str(self.path))
        self.records: list[dict[str, float | str]] = []
        self.errors: list[str] = []
        self.mixups = 0

    def timed(self, kind: str, call: object) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = call()  # type: ignore[operator]
        except requests.RequestException as error:
            self.errors.append(f"{kind}: {error}")
            return None
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            return None
        self.records.append({"kind": kind, "seconds": elapsed})
        return response

    def run(self) -> None:
        session = requests.Session()
        self.barrier.wait(60)
        with self.path.open("rb") as handle:
            self.timed("upload", lambda: session.put(f"{self.url}/datastore/?image={self.image_id}",
                                                     files={"file": (self.path.name, handle)},
                                                     data={"params": "{}"}, timeout=300))
        body = {"params": json.dumps(prompts(self.reference))}
        mask = None
        for _ in range(self.rounds):
            response = self.timed("infer", lambda: session.post(
                f"{self.url}/infer/sarcomakit?image={self.image_id}&output=image", data=body, timeout=300))
            if response is None:
                continue
            mask = read_mask(response.content, self.folder)
            self.records[-1]["model"] = float(response.headers["X-Latency-Model-Ms"]) / 1000
            if mask.shape != self.reference.shape or dice(mask, self.reference) < 0.7:
                self.mixups += 1
        if mask is not None:
            label = self.folder / f"{self.image_id}-label.nii.gz"
            image = sitk.GetImageFromArray(mask.astype(np.uint8))
            sitk.WriteImage(image, str(label))
            with label.open("rb") as handle:
                self.timed("save", lambda: session.put(f"{self.url}/datastore/label?image={self.image_id}&tag=final",
                                                       files={"label": (label.name, handle)},
                                                       data={"params": "{}"}, timeout=300))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, n_clients: int, level: int, args: argparse.Namespace, shape: tuple[int, int, int],
              folder: Path, pid: int) -> dict[str, float]:
    barrier = threading.Barrier(n_clients + 1)
    clients = [Client(url, f"l{level}c{i:02d}", 1000 * level + i, shape, args.rounds, folder, barrier)
               for i in range(n_clients)]
    for client in clients:
        client.start()
    peak = [rss_mib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_mib(pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    barrier.wait(60)
    started = time.perf_counter()
    for client in clients:
        client.join(900)
    wall = time.perf_counter() - started
    done.set()
    sampler.join(5)
    records = [r for c in clients for r in c.records]
    infer = [r for r in records if r["kind"] == "infer"]
    seconds = [float(r["seconds"]) for r in infer]
    overhead = [float(r["seconds"]) - float(r["model"]) for r in infer]
    info = requests.get(f"{url}/info/", timeout=30).json()
    return {"clients": n_clients, "requests": len(records) + sum(len(c.errors) for c in clients),
            "failed": sum(len(c.errors) for c in clients), "mixups": sum(c.mixups for c in clients),
            "throughput": len(records) / wall,
            "infer_p50": percentile(seconds, 50), "infer_p95": percentile(seconds, 95),
            "model_p50": percentile([float(r["model"]) for r in infer], 50),
            "overhead_p50": percentile(overhead, 50), "overhead_p95": percentile(overhead, 95),
            "upload_p50": percentile([float(r["seconds"]) for r in records if r["kind"] == "upload"], 50),
            "save_p50": percentile([float(r["seconds"]) for r in records if r["kind"] == "save"], 50),
            "peak_rss": max(peak), "sessions": info["models"]["sarcomakit"]["model"]["sessions"],
            "errors": "; ".join(e for c in clients for e in c.errors[:1])[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,10,20,50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="random_walker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", default="24,48,48")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    assert len(shape) == 3
    levels = [int(v) for v in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sarcomakit-load-") as tmp:
        folder = Path(tmp)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")]))}
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(folder / "studies"), args.model,
                                   str(args.workers), str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{url}/info/", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
            idle = rss_mib(server.pid)
            for level, n_clients in enumerate(levels, start=1):
                row = run_level(url, n_clients, level, args, shape, folder, server.pid)
                rows.append(row)
                print(f"{n_clients} clients: {row['throughput']:.1f} req/s, infer p50 {row['infer_p50']:.3f} s "
                      f"p95 {row['infer_p95']:.3f} s, failed {row['failed']}, mixed-up {row['mixups']} {row['errors']}",
                      flush=True)
            hwm = rss_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(15)
    table = ["| clients | requests | failed | mixed-up | req/s | infer p50 s | infer p95 s | model p50 s "
             "| API overhead p50 / p95 ms | upload p50 s | save p50 s | peak RSS MiB | sessions held |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['mixups']} | {r['throughput']:.1f} "
                     f"| {r['infer_p50']:.3f} | {r['infer_p95']:.3f} | {r['model_p50']:.3f} "
                     f"| {1000 * r['overhead_p50']:.0f} / {1000 * r['overhead_p95']:.0f} | {r['upload_p50']:.3f} "
                     f"| {r['save_p50']:.3f} | {r['peak_rss']:.0f} | {r['sessions']} |")
    body = (f"{machine_header()}\n\nModel `{args.model}`, {args.workers} inference threads, studies of "
            f"{' x '.join(map(str, shape))} voxels (z, y, x); each client uploads its study, asks for {args.rounds} "
            f"masks from scribble points and saves the last one. Server memory: {idle:.0f} MiB idle, high-water "
            f"mark {hwm:.0f} MiB. API overhead = client round trip minus the model's own latency (includes the "
            f"wait for a free inference thread under load).\n\n" + "\n".join(table))
    print("\n".join(table))
    if not args.no_append:
        append_results("Annotation server under load (concurrent clients on localhost)", body)


if __name__ == "__main__":
    main()
