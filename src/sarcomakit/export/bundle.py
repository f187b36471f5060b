"""Export a trained run as a MONAI bundle that segments images with MONAI alone (no sarcomakit).

Layout (MONAI's bundle specification)::

    OUT/
      configs/metadata.json    versions, task, input channels, output labels, what the bundle leaves out
      configs/inference.json   the plan and the predictor as MONAI components (:mod:`.bundle_config`)
      models/model.pt          weights of one fold (state dict of a MONAI network), or model.ts (TorchScript);
                               an ensemble has fold_K.pt / fold_K.ts per fold
      docs/README.md           what the bundle does, the plan's constants, how to run it, its limits

Run it with ``python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN
--output_dir OUT`` from the bundle folder (the command needs MONAI's ``fire`` extra) or with
``monai.bundle.run(...)`` from Python.

What a bundle carries: the segmentation output only. A multi-task run's grade and survival heads, its
risk cut-off and the case table ``sarcomakit predict`` writes stay behind (a notice says so at export, and
the metadata and README record it). Runs that segment nothing (pretraining) and interactive runs (whose
network needs click channels) are refused. Ensembles are exported whole by default: each fold's network
runs the sliding window, their softmax outputs are averaged (``MeanEnsembled``), as the predictor does;
``folds=[k]`` exports one fold in the single-network layout MONAI Label and MONAI Deploy load.

The bundle is built in a temporary folder beside ``OUT`` and renamed onto it at the end, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_dir
from sarcomakit.export.bundle_config import inference_config, monai_axcodes
from sarcomakit.export.network import ExportedNetwork, export_network, monai_definition
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.tasks import build_task
from sarcomakit.tasks.multitask import MultiTaskTask
from sarcomakit.tasks.segmentation import SegmentationTask

META_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
MULTITASK_NOTICE = ("the run is multi-task: the bundle carries its segmentation only (grade, survival log-risk and "
                    "risk group stay with 'sarcomakit predict').")


@dataclass
class ExportedBundle:
    """What :func:`export_bundle` wrote: the folder, the folds it holds, the network's form and any notices."""

    path: Path
    folds: list[int]
    network_form: str
    notices: list[str] = field(default_factory=list)


def export_bundle(run_dir: str | Path, out_dir: str | Path, *, folds: Sequence[int] | None = None,
                  checkpoint: str = "best", largest_component: bool = False, overwrite: bool = False,
                  authors: str = "unknown", copyright: str = "") -> ExportedBundle:
    """Write a MONAI bundle of ``run_dir``'s segmentation network into ``out_dir`` (module docstring).

    Args:
        run_dir: a run folder from ``sarcomakit train``.
        out_dir: the bundle folder to create.
        folds: the folds to export (default every trained fold, averaged as by ``sarcomakit predict``).
        checkpoint: ``best`` or ``last``.
        largest_component: keep only the largest connected component of each class, as ``sarcomakit predict
            --largest-component``.
        overwrite: replace an existing bundle in ``out_dir``.
        authors, copyright: recorded in ``metadata.json``.

    Raises:
        UserInputError: the run is missing or segments nothing, a fold is not trained, ``out_dir`` exists
            (without ``overwrite``, or is not a bundle), or the network cannot be expressed for MONAI.
    """
    out = Path(out_dir)
    _check_destination(out, overwrite)
    run = RunFolder.open(run_dir)
    plan, config = run.plan(), run.config()
    task = build_task(config)
    notices = []
    if isinstance(task, MultiTaskTask):
        notices.append(MULTITASK_NOTICE)
    elif not isinstance(task, SegmentationTask):
        raise UserInputError(f"the run's task '{config.task}' has no segmentation output a MONAI bundle can carry"
                             f"{' (its network also needs click channels)' if config.task == 'interactive' else ''}.",
                             path=run.root, fix="export a segmentation or multi-task run.")
    available = run.trained_folds(checkpoint)
    chosen = sorted(available) if folds is None else sorted(set(folds))
    missing = [f for f in chosen if f not in available]
    if not available or missing:
        raise UserInputError(f"no checkpoint_{checkpoint}.pt for fold(s) {missing or 'any'}.", path=run.root,
                             fix=f"train those folds first, or choose among {sorted(available) or 'none'}.")
    models = [_segmentation_network(task, plan, config, available[f]) for f in chosen]
    patch = [int(p) for p in (config.patch_size or plan.patch_size)]
    definition = monai_definition(config.network, config.network_options, in_channels=len(plan.channels),
                                  out_channels=len(plan.labels), patch_size=patch)
    network = export_network(models, definition, in_channels=len(plan.channels), patch_size=patch,
                             sw_batch_size=config.sw_batch_size, where=run.root)
    inference = inference_config(plan, patch_size=patch, overlap=config.sw_overlap,
                                 sw_batch_size=config.sw_batch_size, folds=chosen, network_def=network.definition,
                                 largest_component=largest_component)
    metadata = bundle_metadata(plan, config, run.root.resolve(), chosen, checkpoint, network.form, patch,
                               multitask=bool(notices), largest_component=largest_component, authors=authors,
                               copyright=copyright)
    with atomic_dir(out) as tmp:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        _write_json(tmp / "configs" / "inference.json", inference)
        _write_json(tmp / "configs" / "metadata.json", metadata)
        _write_weights(tmp / "models", models, network, chosen)
        (tmp / "docs" / "README.md").write_text(bundle_readme(plan, metadata, inference), encoding="utf-8")
        tmp.chmod(0o777 & ~_umask())
    return ExportedBundle(path=out, folds=chosen, network_form=network.form, notices=notices)


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise UserInputError("already exists.", path=out, fix="choose another folder, or pass --overwrite.")
    if not out.is_dir() or not (out / "configs" / "metadata.json").is_file():
        raise UserInputError("exists and is not a MONAI bundle; --overwrite replaces only a bundle.", path=out,
                             fix="choose another folder.")


def _segmentation_network(task: Any, plan: Plan, config: TrainConfig, checkpoint: Path) -> nn.Module:
    """The fold's network on the CPU in eval mode; for a multi-task run its segmentation backbone."""
    model = task.build_model(plan, config)
    model.load_state_dict(load_checkpoint(checkpoint, map_location=torch.device("cpu"))["model"])
    network = model.backbone if isinstance(task, MultiTaskTask) else model
    return network.eval()


def _write_weights(folder: Path, models: list[nn.Module], network: ExportedNetwork, folds: list[int]) -> None:
    names = ["model"] if len(folds) == 1 else [f"fold_{f}" for f in folds]
    for i, name in enumerate(names):
        if network.definition is not None:
            torch.save(models[i].state_dict(), folder / f"{name}.pt")
        else:
            torch.jit.save(network.scripted[i], str(folder / f"{name}.ts"))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def not_carried(multitask: bool) -> list[str]:
    """What ``sarcomakit predict`` does that the bundle does not (also listed in the README and metadata)."""
    items = ["test-time mirroring (sarcomakit predict --tta)",
             "class probability maps (sarcomakit predict --probabilities)",
             "inputs other than NIfTI (set the LoadImaged reader, e.g. ITKReader for NRRD/MHA or PydicomReader for "
             "DICOM series, with that package installed)",
             "prediction records that skip cases already predicted"]
    if multitask:
        items.insert(0, "the multi-task heads: grade probabilities, survival log-risk, risk group "
                        "(clinical_predictions.csv)")
    return items


def bundle_metadata(plan: Plan, config: TrainConfig, run_root: Path, folds: list[int], checkpoint: str,
                    network_form: str, patch: list[int], *, multitask: bool, largest_component: bool,
                    authors: str, copyright: str) -> dict[str, Any]:
    """``configs/metadata.json`` (MONAI's metadata schema, plus a ``sarcomakit`` section with the provenance)."""
    import monai

    labels = sorted(plan.labels.items(), key=lambda item: item[1])
    modality = "CT" if any(n.scheme == "ct" for n in plan.normalization) else "MR"
    ensemble = f"an ensemble of folds {', '.join(map(str, folds))}" if len(folds) > 1 else f"fold {folds[0]}"
    return {
        "schema": META_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported from the sarcomakit run {run_root.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        # MONAI's KeepLargestConnectedComponent labels components with scikit-image
        "required_packages_version": {"nibabel": _version("nibabel"),
                                      **({"scikit-image": _version("scikit-image")} if largest_component else {})},
        "optional_packages_version": {"fire": _version("fire")},
        "name": f"sarcomakit {config.network} segmentation ({run_root.name})",
        "task": f"3D segmentation of {', '.join(name for name, value in labels if value)} from "
                f"{', '.join(plan.channels)}",
        "description": f"A {config.network} network trained with sarcomakit ({config.task} task, {ensemble}, "
                       f"checkpoint {checkpoint}); preprocessing and restoration follow the run's plan with MONAI "
                       "transforms."
                       + (" Segmentation output only: the multi-task heads are not carried." if multitask else ""),
        "authors": authors,
        "copyright": copyright,
        "data_type": "nibabel",
        "image_classes": f"{len(plan.channels)} channel(s) in this order: {', '.join(plan.channels)}",
        "label_classes": ", ".join(f"{value} is {name}" for name, value in labels),
        "pred_classes": ", ".join(f"{value} is {name}" for name, value in labels),
        "intended_use": "Research only; not for clinical diagnosis.",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if modality == "CT" else "magnitude", "modality": modality,
                "num_channels": len(plan.channels), "spatial_shape": patch, "dtype": "float32",
                "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(plan.channels)},
                "axcodes": monai_axcodes(plan.orientation),
                **({"spacing": [float(s) for s in plan.target_spacing]} if plan.resample else {})}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(plan.labels), "spatial_shape": patch,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                "channel_def": {str(value): name for name, value in labels}}},
        },
        "sarcomakit": {
            "run": run_root.name, "task": config.task, "network": config.network, "network_form": network_form,
            "folds": folds, "checkpoint": checkpoint, "largest_component": largest_component,
            "segmentation_only": multitask, "not_carried": not_carried(multitask),
            "exported_with": {"sarcomakit": _version("sarcomakit"), "python": platform.python_version()},
            "plan": plan.model_dump(mode="json"),
        },
    }


def bundle_readme(plan: Plan, metadata: dict[str, Any], inference: dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle does, the plan's constants, how to run it, what it leaves out."""
    info = metadata["sarcomakit"]
    steps = "\n".join(f"{i}. `{t['_target_']}`" + _step_detail(t)
                      for i, t in enumerate(inference["preprocessing"]["transforms"], 1))
    post = "\n".join(f"{i}. `{t['_target_']}`" + _step_detail(t)
                     for i, t in enumerate(inference["postprocessing"]["transforms"], 1))
    norms = "\n".join(f"| {n.channel} | {n.scheme} | " + (
        f"clip [{n.clip_low:.6g}, {n.clip_high:.6g}], then (x - {n.mean:.6g}) / {n.std:.6g}" if n.scheme == "ct" else
        "per image (x - mean) / std" + (" inside the nonzero voxels, 0 outside" if n.use_nonzero_mask else "")
        if n.scheme == "zscore" else "0.5 / 99.5 percentiles to 0 / 1, clipped" if n.scheme == "percentile" else
        "none (float32 only)") + " |" for n in plan.normalization)
    input_names = ("`{case}.nii.gz` (or `{case}_0000.nii.gz`)" if len(plan.channels) == 1 else
                   "one file per channel, `{case}_{XXXX}.nii.gz`, XXXX = " +
                   ", ".join(f"{i:04d} for {c}" for i, c in enumerate(plan.channels)))
    inferer = inference["inferer"]
    missing = "\n".join(f"- {item}" for item in info["not_carried"])
    return f"""# {metadata['name']}

{metadata['description']}

Exported by `sarcomakit export bundle` from the run `{info['run']}` (folds {info['folds']}, checkpoint
`{info['checkpoint']}`, network as {'a MONAI class and a state dict' if info['network_form'] == 'state_dict'
                                     else 'TorchScript'}). The inference pipeline uses MONAI components only: the
bundle runs in an environment with MONAI, PyTorch and nibabel and without sarcomakit.

## Run

```
cd this-folder
python -m monai.bundle run --config_file configs/inference.json \\
    --dataset_dir /path/to/images --output_dir /path/to/masks
```

Needs {', '.join(sorted(['monai', 'torch', *metadata['required_packages_version']]))} (`pip install` them).
`python -m monai.bundle` also needs MONAI's `fire` extra (`pip install "monai[fire]"`); without it, call
`monai.bundle.run(config_file="configs/inference.json", dataset_dir=..., output_dir=...)` from Python.
Input: {input_names} under `dataset_dir`. Output: `{{case}}.nii.gz` masks (uint8, {metadata['label_classes']}) on
each input's own grid, in `output_dir`.

## Input

Channels, in this order: {', '.join(plan.channels)}.

| channel | scheme | normalisation (the plan's constants) |
|---|---|---|
{norms}

## Pipeline

Preprocessing (the run's plan):

{steps}

Inference: `SlidingWindowInferer`, window {inferer['roi_size']} (the run's patch), overlap {inferer['overlap']},
Gaussian blending, {len(info['folds'])} network(s){' averaged after softmax' if len(info['folds']) > 1 else ''}.

Postprocessing:

{post}

Array order: `Orientationd` to `{monai_axcodes(plan.orientation)}` makes MONAI's (i, j, k) array the (z, y, x) array
the network was trained on (plan orientation {plan.orientation}), so the spacing {plan.target_spacing} and the window
are given in that order.

## What this bundle cannot carry

{missing}

Known small differences from `sarcomakit predict`: `Spacingd` keeps the target spacing exactly where sarcomakit
stretches it slightly to keep each case's field of view (the voxel counts agree); across thick slices of anisotropic
data sarcomakit copies the nearest slice where `Spacingd` interpolates; the z-score's nonzero mask is per channel
without hole filling; the bundle computes in float32 where `sarcomakit predict` uses mixed precision on CUDA. On
cases whose extent is a whole number of target voxels the masks equal those of
`sarcomakit predict` (Dice 1.0 in sarcomakit's tests); otherwise expect Dice of about 0.98 or more.

## Intended use

{metadata['intended_use']}
"""


def _step_detail(transform: dict[str, Any]) -> str:
    shown = {k: v for k, v in transform.items() if k not in ("_target_", "keys") and not str(v).startswith("@")}
    return f": {json.dumps(shown)}" if shown else ""
