"""Does the interactive network beat the random walker under the robot user, and how fast is it per interaction?

Usage: python benchmarks/bench_interactive_network.py [--model default] [--cases 6] [--seed 1000] [--rounds 5]
       [--channels T2FS,CT] [--out interactive-benchmark]

1. Quality: the network (``--model``: ``default``, the model shipped with the package, or a run folder)
   and the random walker, played by the same robot (scribble protocol, random plane, seeds shared
   between methods) for ``--rounds`` rounds on ``--cases`` held-out synthetic cases (cohort seed
   ``--seed``, never seen in training), one channel at a time (``--channels``), and on the two shared
   real scans when present (a brain MRI and a lung CT): Dice per round with bootstrap intervals,
   NoC@85/90 with failures, AUC, surface Dice, latency. The extreme-point protocol (InteractiveNet's)
   is run on the synthetic cases too, with the geodesic model as its classical reference.
2. Latency per interaction against scan size: a 512 x 512 x 60 CT-like and a 256 x 256 x 128 MRI-like
   volume (a 3 cm sphere in noise), median and p95 seconds per interaction, and the one-off time to
   prepare the image (the plan's resampling and normalisation, done once per session).
Appends the tables to RESULTS.md and writes each evaluation's tables and plot under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

from sarcomakit.data.synthetic import make_synthetic_case  # noqa: E402
from sarcomakit.interactive import (  # noqa: E402
    GeodesicModel,
    InteractiveCase,
    InteractiveSession,
    RandomWalkerModel,
    RobotConfig,
    evaluate_interactive,
)
from sarcomakit.interactive.models import load_interactive_model  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiology"


def synthetic_cases(n: int, seed: int, channel: str) -> list[InteractiveCase]:
    cases = []
    for index in range(n):
        case = make_synthetic_case(index, seed=seed, channels=(channel,))
        image = case.geometry.apply(sitk.GetImageFromArray(case.images[channel].astype(np.float32)))
        cases.append(InteractiveCase(f"{case.case_id} {channel}", image, case.label > 0))
    return cases


def real_cases() -> list[InteractiveCase]:
    cases = []
    for name in ("brain1", "lung1"):
        if (REAL / f"{name}_label.nrrd").is_file():
            image = sitk.ReadImage(str(REAL / f"{name}_image.nrrd"), sitk.sitkFloat32)
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / f"{name}_label.nrrd"))) > 0
            cases.append(InteractiveCase(name, image, label))
    return cases


def quality_table(models: dict, cases: list[InteractiveCase], rounds: int, group: str, robot: RobotConfig,
                  out: Path) -> str:
    evaluation = evaluate_interactive(models, cases, n_rounds=rounds, robot=robot, seed=0)
    evaluation.save(out, title=f"{group}: {robot.initial} protocol")
    curve = evaluation.curve_frame()
    summary = evaluation.summary().set_index("method")
    head = " | ".join(f"Dice r{k}" for k in range(1, rounds + 1))
    columns = "NoC@85 (failed) | NoC@90 (failed) | AUC | surface Dice | latency median / p95 s"
    lines = [f"| cases | method | {head} | {columns} |", "|---|---|" + "---|" * (rounds + 5)]
    for method in evaluation.methods:
        points = curve[curve.method == method].sort_values("round")
        cells = " | ".join(f"{row.mean_dice:.3f} [{row.ci_low:.2f}, {row.ci_high:.2f}]" for row in points.itertuples())
        row = summary.loc[method]
        lines.append(f"| {group} (n={int(row.n_cases)}) | {method} | {cells} "
                     f"| {row.noc85:.1f} ({int(row.noc85_failed)}) "
                     f"| {row.noc90:.1f} ({int(row.noc90_failed)}) | {row.mean_dice_auc:.3f} "
                     f"| {row.mean_final_surface_dice:.3f} | {row.latency_median_s:.2f} / {row.latency_p95_s:.2f} |")
    per_case = evaluation.case_frame()
    detail = ", ".join(f"{r.case_id} {r.method}: {r.final_dice:.2f}" for r in per_case.itertuples())
    return "\n".join(lines) + f"\n\nFinal Dice per case: {detail}."


def sphere_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int) -> InteractiveCase:
    grids = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij",
                        sparse=True)
    reference = sum(g**2 for g in grids) <= 15.0**2
    image = reference.astype(np.float32) + np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)
    label = "x".join(str(n) for n in reversed(shape))
    return InteractiveCase(f"sphere {label}", image, reference, spacing)


def latency_table(models: dict, rounds: int) -> str:
    volumes = [sphere_volume((60, 512, 512), (5.0, 0.7, 0.7), 0), sphere_volume((128, 256, 256), (1.0, 0.9, 0.9), 1)]
    lines = ["| volume (x, y, z) | method | prepare s (once) | latency median s | p95 s | final Dice |",
             "|---|---|---|---|---|---|"]
    for volume in volumes:
        for method, model in models.items():
            started = time.perf_counter()
            InteractiveSession(model, volume.image, spacing=volume.spacing)
            prepare = time.perf_counter() - started
            evaluation = evaluate_interactive({method: model}, [volume], n_rounds=rounds,
                                              robot=RobotConfig(plane="axial"), seed=0)
            frame = evaluation.rounds_frame()
            latency = frame.latency_s.dropna()
            lines.append(f"| {volume.case_id.split()[1]} | {method} | {prepare:.2f} | {latency.median():.2f} "
                         f"| {latency.quantile(0.95):.2f} | {frame.dice.iloc[-1]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", default="T2FS,CT")
    parser.add_argument("--out", type=Path, default=Path("interactive-benchmark"))
    parser.add_argument("--no-append", action="store_true", help="Print the tables without appending them.")
    args = parser.parse_args()
    network = load_interactive_model(args.model)
    models = {"network": network, "random walker": RandomWalkerModel()}
    synthetic = [case for channel in args.channels.split(",") for case in synthetic_cases(args.cases, args.seed,
                                                                                           channel)]
    tables = [quality_table(models, synthetic, args.rounds, "synthetic", RobotConfig(), args.out / "synthetic")]
    real = real_cases()
    if real:
        tables.append(quality_table(models, real, args.rounds, "real scans", RobotConfig(), args.out / "real"))
    extreme = RobotConfig(initial="extreme_points")
    tables.append(quality_table({"network": network, "geodesic": GeodesicModel()}, synthetic, args.rounds,
                                "synthetic, extreme points", extreme, args.out / "extreme_points"))
    latency = latency_table(models, 3)
    body = (f"{machine_header()}\n\n"
            f"Model: {args.model} ({getattr(network, 'name', '')}); synthetic held-out cohort seed {args.seed}, "
            f"{args.cases} cases x channels {args.channels} (one channel per evaluation); robot: scribble "
            f"protocol, random plane, jitter 1, one correction per round on the largest error (same seeds for "
            f"every method); mean Dice per round with 95% bootstrap intervals over cases.\n\n"
            + "\n\n".join(tables)
            + f"\n\nLatency per interaction against scan size (sphere of 3 cm radius in noise, 3 rounds, axial "
            f"scribbles; 'prepare' is the once-per-session preprocessing):\n\n{latency}")
    print(body)
    if not args.no_append:
        append_results("Interactive segmentation: the network against the random walker", body)


if __name__ == "__main__":
    main()
