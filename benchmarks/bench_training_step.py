"""Training step time of the default network in sarcomakit's engine against a bare MONAI loop.

Usage: python benchmarks/bench_training_step.py [--iterations 30] [--patch 32,80,80] [--augmentation default]

Same network (residual U-Net), loss (Dice + CE), optimiser, patch and batch size. The bare loop
trains on tensors already in memory, so the difference is the engine's overhead: patch sampling,
augmentation and loading (hidden by DataLoader workers when there are cores to spare),
gradient clipping and bookkeeping. Also reports the fraction of step time spent waiting for data.
Goals: overhead <= 5%, data wait <= 10%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

from sarcomakit.core.device import select_device  # noqa: E402
from sarcomakit.data.synthetic import make_synthetic_cohort  # noqa: E402
from sarcomakit.planning.plan import plan_cohort  # noqa: E402
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort  # noqa: E402
from sarcomakit.runs.config import TrainConfig  # noqa: E402
from sarcomakit.training.fold import build_model, train_fold  # noqa: E402


def bare_monai_step_seconds(plan, config: TrainConfig, device: torch.device, iterations: int) -> float:
    model = build_model(plan, config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    batch = config.batch_size or plan.batch_size
    image = torch.randn(batch, len(plan.channels), *config.patch_size, device=device)
    label = (torch.rand(batch, 1, *config.patch_size, device=device) > 0.9).long()
    for step in range(iterations + 3):
        if step == 3:  # warm-up steps excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image), label).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--patch", default="32,80,80")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--augmentation", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    device = select_device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sarcomakit-bench-"))
    cohort = make_synthetic_cohort(work / "cohort", n_cases=8, seed=0)
    plan = plan_cohort(cohort, work / "plan.json")
    preprocess_cohort(cohort, plan, work / "preprocessed")
    cases = [PreprocessedCase.load(work / "preprocessed", cid) for cid in cohort.case_ids]
    patch = [int(v) for v in args.patch.split(",")]
    config = TrainConfig(epochs=2, iterations_per_epoch=args.iterations, patch_size=patch, optimizer="sgd",
                         batch_size=args.batch_size, augmentation=args.augmentation, device=str(device))

    bare = bare_monai_step_seconds(plan, config, device, args.iterations)
    result = train_fold(cases, [], plan, config, work / f"run-{time.time_ns()}", fold=0)
    steady = result.history[-1]  # the first epoch includes worker start-up
    ours = steady["epoch_seconds"] / args.iterations
    overhead = ours / bare - 1
    rows = [
        "| loop | seconds / step | overhead vs bare | data wait |",
        "|---|---|---|---|",
        f"| bare MONAI loop (tensors in memory) | {bare:.3f} | - | - |",
        f"| sarcomakit engine ({args.augmentation} augmentation) | {ours:.3f} | {100 * overhead:+.1f}% "
        f"| {100 * steady['data_wait_fraction']:.1f}% |",
    ]
    table = "\n".join(rows) + (f"\n\nresunet, patch {patch}, batch {config.batch_size}, {len(plan.channels)} channels, "
                               f"{args.iterations} iterations after one warm-up epoch, device {device}.")
    print(table)
    append_results("Training step time", machine_header(device) + "\n\n" + table)


if __name__ == "__main__":
    main()
