"""``sarcomakit train --nproc 2`` launches torchrun: two CPU processes (gloo) train one model, rank 0 writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from processes import distributed_test_env, needs_loopback_tcp, run_bounded
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.checkpoint import load_checkpoint


@pytest.mark.slow
@needs_loopback_tcp
def test_train_with_two_processes_writes_one_resumable_run_and_predicts(tiny_cohort, tmp_path: Path) -> None:
    plan_cohort(tiny_cohort, tmp_path / "plan.json")
    config = {"epochs": 2, "iterations_per_epoch": 2, "patch_size": [16, 32, 32], "batch_size": 1,
              "optimizer": "adamw", "learning_rate": 3e-3, "augmentation": "none", "num_workers": 0, "n_folds": 3,
              "network_options": {"channels": [8, 16], "num_res_units": 1}, "device": "cpu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "sarcomakit", "train", str(tiny_cohort.source), "--plan",
               str(tmp_path / "plan.json"), "--config", str(tmp_path / "config.json"), "--out", str(run),
               "--folds", "3", "--device", "cpu", "--nproc", "2"]
    env = distributed_test_env()
    done = run_bounded(command, env, timeout_s=420)
    assert done.returncode == 0, done.stderr[-3000:]
    # one progress line per epoch, printed by rank 0 only; the run folder is written once
    assert done.stderr.count("fold_0 epoch 2/2") == 1, done.stderr[-2000:]
    assert "2 process(es)" in (run / "fold_0" / "train.log").read_text(encoding="utf-8")
    history = (run / "fold_0" / "history.csv").read_text(encoding="utf-8").splitlines()
    assert len(history) == 3 and "val_dice" in history[0]
    state = load_checkpoint(run / "fold_0" / "checkpoint_last.pt")
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    config["epochs"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    resumed = run_bounded([*command, "--resume"], env, timeout_s=420)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "fold_0" / "checkpoint_last.pt")["epoch"] == 2
    assert "fold_0 epoch 3/3" in resumed.stderr and "fold_0 epoch 1/3" not in resumed.stderr

    out = tmp_path / "pred"
    predicted = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "sarcomakit", "predict", str(run), str(tiny_cohort.source), str(out),
                             "--device", "cpu"], env, timeout_s=420)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in tiny_cohort.case_ids)
