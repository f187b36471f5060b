"""How good and how fast are the classical interactive baselines under the robot user?

Usage: python benchmarks/bench_interactive_classical.py [--cases 6] [--seed 1000] [--rounds 5]

1. Quality: the random walker and the geodesic model, played by the robot user (scribble protocol,
   random plane, seeds shared between methods) for ``--rounds`` rounds on ``--cases`` held-out
   synthetic cases (T1 + T2FS, cohort seed ``--seed``) and on the two shared real scans when present:
   Dice per round, NoC@85/90 with failures, AUC of the Dice curve, surface Dice.
2. Latency per interaction against scan size: the same protocol on a 512 x 512 x 60 CT-like and
   a 256 x 256 x 128 MRI-like synthetic volume (a 3 cm sphere in noise): median and p95 seconds and
   the final ROI size, which is what keeps latency flat.
Appends both tables to RESULTS.md. These are the floor a trained interactive network must beat.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    RandomWalkerModel,
    RobotConfig,
    evaluate_interactive,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiology"


def synthetic_cases(n: int, seed: int) -> list[InteractiveCase]:
    cases = []
    for index in range(n):
        case = make_synthetic_case(index, seed=seed, channels=("T1", "T2FS"))
        image = np.stack([case.images["T1"], case.images["T2FS"]]).astype(np.float32)
        cases.append(InteractiveCase(case.case_id, image, case.label > 0, tuple(case.geometry.array_spacing)))
    return cases


def real_cases() -> list[InteractiveCase]:
    cases = []
    for name in ("brain1", "lung1"):
        if (REAL / f"{name}_label.nrrd").is_file():
            image = sitk.ReadImage(str(REAL / f"{name}_image.nrrd"), sitk.sitkFloat32)
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / f"{name}_label.nrrd"))) > 0
            cases.append(InteractiveCase(name, image, label))
    return cases


def sphere_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int) -> InteractiveCase:
    grids = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij",
                        sparse=True)
    reference = sum(g**2 for g in grids) <= 15.0**2
    image = reference.astype(np.float32) + np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)
    label = "x".join(str(n) for n in reversed(shape))
    return InteractiveCase(f"sphere {label}", image, reference, spacing)


def quality_table(cases: list[InteractiveCase], rounds: int, group: str) -> str:
    models = {"random walker": RandomWalkerModel(), "geodesic": GeodesicModel()}
    evaluation = evaluate_interactive(models, cases, n_rounds=rounds, robot=RobotConfig(), seed=0)
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


def latency_table(rounds: int) -> str:
    volumes = [sphere_volume((60, 512, 512), (5.0, 0.7, 0.7), 0), sphere_volume((128, 256, 256), (1.0, 0.9, 0.9), 1)]
    models = {"random walker": RandomWalkerModel(), "geodesic": GeodesicModel()}
    evaluation = evaluate_interactive(models, volumes, n_rounds=rounds, robot=RobotConfig(plane="axial"), seed=0)
    rounds_frame = evaluation.rounds_frame()
    lines = ["| volume (x, y, z) | method | latency median s | p95 s | final Dice |", "|---|---|---|---|---|"]
    for (case_id, method), group in rounds_frame.groupby(["case_id", "method"], sort=False):
        latency = group.latency_s.dropna()
        lines.append(f"| {case_id.split()[1]} | {method} | {latency.median():.2f} | {latency.quantile(0.95):.2f} "
                     f"| {group.dice.iloc[-1]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tables = [quality_table(synthetic_cases(args.cases, args.seed), args.rounds, "synthetic")]
    real = real_cases()
    if real:
        tables.append(quality_table(real, args.rounds, "real scans"))
    latency = latency_table(3)
    body = (f"{machine_header()}\n\n" + "\n\n".join(tables)
            + f"\n\nMean Dice per round with 95% bootstrap intervals over cases; robot: scribble protocol, random "
            f"plane, jitter 1, one correction per round on the largest error; synthetic cohort seed {args.seed}."
            f"\n\nLatency per interaction against scan size (sphere of 3 cm radius in noise, 3 rounds, axial "
            f"scribbles):\n\n{latency}")
    print(body)
    append_results("Interactive segmentation: classical baselines under the robot user", body)


if __name__ == "__main__":
    main()
