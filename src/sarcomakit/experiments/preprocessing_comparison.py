"""Can the network learn its own preprocessing? Fixed vs learnt preprocessing, on the same folds, seeds and budget.

Arms (every one trains the same backbone with the same options, epochs, iterations, batch and seed):

- ``fixed``: nnU-Net-style plan (clip/z-score, resampling to the target spacing): the reference;
- ``minimal``: reorientation, float and the nonzero crop only (no normalisation, no resampling);
- ``percentile``: a well-kept fixed alternative: MONAI's ``ScaleIntensityRangePercentiles`` per image
  (0.5/99.5 percentiles to 0/1, clipped) with the plan's resampling;
- one learnable layer alone, replacing only the step it learns (:mod:`sarcomakit.models.preprocessing_layers`):
  ``window`` (CT/PET channels), ``monotone`` (the other channels; landmarks fitted on the fold's training
  images, z-scored), ``normaliser``, ``resizer``, ``zoom`` (both on the native grid), ``roi`` (on the fixed plan);
- ``roi_box``: the ROI crop trained with its weak box loss too (the label's bounding box, enlarged);
- ``all``: every learnable layer together on the minimal pipeline;
- ``obelisk``: the OBELISK front end + small U-Net hybrid on the fixed plan.

Settings: ``in_domain`` (cross-validation with every site in every training fold), ``loso``
(leave-one-site-out: each site is the validation fold once) and ``spacing_shift`` (a controlled slice-thickness
shift, :mod:`sarcomakit.experiments.spacing_shift`: half the patients train on their original slices and the
other half are validated on copies with slices 3 times thicker by default, then the reverse). Every validation case is
predicted with :class:`~sarcomakit.inference.predictor.Predictor` (the arm's plan, layers and restoration to
the input grid) and scored on its original grid, so arms on different grids are compared on the same voxels.

Nothing of a validation case shapes what is scored on it (:mod:`sarcomakit.experiments.protocol`): each fold
is planned on its own training cases (fingerprint, target spacing, CT clipping bounds, the monotone layer's
landmarks), and every arm keeps its last epoch.

```
EXP/
  preprocessed/<variant>/             cases preprocessed once per plan variant (keyed by the plan's digest)
  <setting>/splits.json               the folds of the setting
  <setting>/plans/split_K/            the fold's plan and fingerprint, from its training cases
  <setting>/runs/<arm>/split_K/       a run folder per arm and fold (its fold_0/); costs.json per arm
  <setting>/oof_predictions.csv       Dice and HD95 per validation case and arm
  <setting>/comparison.csv/.md, differences.csv   bootstrap intervals, paired differences against fixed
  <setting>/learnt_intensity.png      learnt windows and standard scales against their initial ones
  spacing_shift/thick_x<factor>/      the thick-slice copies (NIfTI) and their manifest
  comparison.md, costs.csv, experiment.json
```
Every step resumes: finished folds and evaluations are reused when the experiment is rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.console import Console

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json, write_text
from sarcomakit.core.io.image import read_image
from sarcomakit.core.provenance import content_digest, json_digest, manifest_record
from sarcomakit.data.folds import save_folds
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.comparison import ComparisonResult, compare_methods
from sarcomakit.evaluation.comparison_tables import comparison_markdown, markdown_table, write_comparison
from sarcomakit.evaluation.metrics import hausdorff_distance_95
from sarcomakit.evaluation.oof import OOF_COLUMNS, OOF_FILE, write_oof
from sarcomakit.experiments.learnt_figures import intensity_by_site_figure, layer_prefix, learnt_intensity_figure
from sarcomakit.experiments.learnt_geometry import learnt_geometry_figure
from sarcomakit.experiments.protocol import plan_training_cases, without_model_selection
from sarcomakit.experiments.spacing_shift import spacing_shift_folds, thick_slice_cohort
from sarcomakit.inference.predictor import Predictor
from sarcomakit.models.preprocessing_layers import WINDOWED_CHANNELS, fit_standard_landmarks, input_layer_specs
from sarcomakit.planning.fingerprint import Fingerprint
from sarcomakit.planning.plan import Plan, with_learnt_steps
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort
from sarcomakit.reporting.markdown_report import write_markdown_report
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import build_task
from sarcomakit.tasks.segmentation import segmentation_dice
from sarcomakit.training.api import train

ALL_LAYERS = ("window", "monotone", "normaliser", "resizer", "zoom", "roi")
ARMS = ("fixed", "minimal", "percentile", *ALL_LAYERS, "roi_box", "all", "obelisk")
BOX_WEIGHT = 1.0  # the roi_box arm's weak box loss weight
SETTINGS = ("in_domain", "loso", "spacing_shift")
EXPERIMENT_TASKS = ("segmentation", "multitask")
THICK_FACTOR = 3.0  # default slice thickness of the spacing-shift copies, as a multiple of the original
REFERENCE = "fixed"


@dataclass(frozen=True)
class Arm:
    """One arm: the plan steps it leaves to the network, for which channels, its input layers and network."""

    name: str
    learnt_steps: tuple[str, ...] = ()
    intensity_channels: str = "all"  # "all", "windowed" or "others"
    layers: tuple[str, ...] = ()
    scheme: str | None = None  # a fixed normalisation scheme for every channel (the fixed alternative)
    network: str | None = None  # default: the config's network
    layer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)  # by layer name


ARM_DEFINITIONS = {
    "fixed": Arm("fixed"),
    "minimal": Arm("minimal", ("intensity", "spacing")),
    "percentile": Arm("percentile", scheme="percentile"),
    "window": Arm("window", ("intensity",), "windowed", ("window",)),
    "monotone": Arm("monotone", ("intensity",), "others", ("monotone",)),
    "normaliser": Arm("normaliser", ("intensity",), "all", ("normaliser",)),
    "resizer": Arm("resizer", ("spacing",), layers=("resizer",)),
    "zoom": Arm("zoom", ("spacing",), layers=("zoom",)),
    "roi": Arm("roi", ("crop",), layers=("roi",)),
    "roi_box": Arm("roi_box", ("crop",), layers=("roi",), layer_options={"roi": {"box_weight": BOX_WEIGHT}}),
    "all": Arm("all", ("intensity", "spacing", "crop"), "all", ALL_LAYERS),
    "obelisk": Arm("obelisk", ("sampling",), network="obelisk_unet"),
}


# ---------------------------------------------------------------------------- folds
def in_domain_folds(manifest: Manifest, n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Folds with every site spread over every fold (seeded), so each validation case's site is in training."""
    if len(manifest.cases) < n_folds:
        raise UserInputError(f"{len(manifest.cases)} cases cannot be split into {n_folds} folds.",
                             path=manifest.source, fix="use fewer folds (--folds) or add cases.")
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[str]] = {}
    for case in manifest.cases:
        by_site.setdefault(str(case.site), []).append(case.case_id)
    assignment: dict[str, int] = {}
    start = 0
    for site in sorted(by_site):
        ids = [by_site[site][i] for i in rng.permutation(len(by_site[site]))]
        for i, case_id in enumerate(ids):
            assignment[case_id] = (start + i) % n_folds
        start += len(ids)
    return [{"train": [c for c in manifest.case_ids if assignment[c] != k],
             "val": [c for c in manifest.case_ids if assignment[c] == k]} for k in range(n_folds)]


def leave_one_site_out_folds(manifest: Manifest) -> list[dict[str, list[str]]]:
    """One fold per site: trained on the other sites, validated on it (empty when fewer than two sites)."""
    sites = sorted({str(c.site) for c in manifest.cases if c.site is not None})
    if len(sites) < 2 or any(c.site is None for c in manifest.cases):
        return []
    return [{"train": [c.case_id for c in manifest.cases if str(c.site) != site],
             "val": [c.case_id for c in manifest.cases if str(c.site) == site]} for site in sites]


# ---------------------------------------------------------------------------- arms
def arm_plan(plan: Plan, arm: Arm) -> Plan:
    """The plan an arm preprocesses with: the fixed plan less the steps its layers learn."""
    if arm.scheme is not None:
        return plan.model_copy(update={"normalization": [n.model_copy(update={"scheme": arm.scheme,
                                                                             "use_nonzero_mask": False})
                                                         for n in plan.normalization]})
    windowed = [c for c in plan.channels if c.upper() in WINDOWED_CHANNELS] or list(plan.channels)
    others = [c for c in plan.channels if c not in windowed] or list(plan.channels)
    channels = {"all": list(plan.channels), "windowed": windowed, "others": others}[arm.intensity_channels]
    return with_learnt_steps(plan, list(arm.learnt_steps), channels=channels) if arm.learnt_steps else plan


def _variant_name(plan: Plan) -> str:
    """A stable folder name for a plan variant: its schemes, resampling, and the plan's digest (the cache of
    :func:`~sarcomakit.planning.preprocess.preprocess_cohort` is valid for one plan only)."""
    schemes = "-".join(n.scheme for n in plan.normalization)
    return f"{schemes}_{'resampled' if plan.resample else 'native'}_{json_digest(plan.model_dump(mode='json'))[:8]}"


def arm_config(arm: Arm, config: TrainConfig, plan: Plan, fingerprint: Fingerprint | None,
               landmarks: list[list[float]] | None, n_folds: int) -> TrainConfig:
    """The training options of an arm: the shared ones (task included), with its network and resolved input
    layers."""
    options = {k: v for k, v in config.network_options.items() if k != "input_layers"}
    network = arm.network or config.network
    if arm.network == "obelisk_unet":
        options = {k: v for k, v in options.items() if k == "channels"}
    if arm.layers:
        specs = input_layer_specs(list(arm.layers), plan, fingerprint, landmarks=landmarks)
        patch = config.patch_size or plan.patch_size
        for spec in specs:
            spec.update(arm.layer_options.get(spec["layer"], {}))
            if spec["layer"] == "resizer":  # the average spacing change of the plan, kept divisible by 8
                native = np.median(fingerprint.spacings, axis=0) if fingerprint is not None else plan.target_spacing
                sizes = [max(8, int(round(p * n / t / 8)) * 8) for p, n, t in
                         zip(patch, native, plan.target_spacing, strict=True)]
                spec["scale"] = [s / p for s, p in zip(sizes, patch, strict=True)]
        options["input_layers"] = specs
    return config.updated(network=network, network_options=options, n_folds=max(2, n_folds))


def _monotone_landmarks(plan: Plan, folder: Path, case_ids: Sequence[str]) -> list[list[float]]:
    """Nyúl–Udupa standard landmarks per channel, from the cohort's unnormalised cases (no labels used)."""
    cases = [PreprocessedCase.load(folder, c) for c in case_ids]
    return [fit_standard_landmarks([np.asarray(c.data[k]) for c in cases]) for k in range(len(plan.channels))]


# ---------------------------------------------------------------------------- evaluation
def _evaluate_fold(run_dir: Path, config: TrainConfig, manifest: Manifest,
                   val_ids: Sequence[str]) -> tuple[list[dict[str, Any]], float]:
    """Each validation case's out-of-fold row (Dice and HD95 on its input grid; with a multi-task run also the
    grade probabilities and log-risk the task predicts, beside the true grade and follow-up), and the mean
    inference time per case. The run's fold 0 is predicted as ``sarcomakit predict`` would, task state included."""
    predictor = Predictor.from_run(run_dir, folds=[0], device=config.device)
    n_labels = len(predictor.plan.labels)
    rows, seconds = [], []
    for case_id in val_ids:
        case = manifest[case_id]
        start = time.perf_counter()
        prediction = predictor.predict_case(case)
        seconds.append(time.perf_counter() - start)
        assert case.label is not None
        label = read_image(case.label)
        predicted = sitk.GetArrayFromImage(prediction.mask)
        reference = sitk.GetArrayFromImage(label)
        spacing = tuple(reversed(label.GetSpacing()))
        hd95 = [hausdorff_distance_95(predicted == k, reference == k, spacing) for k in range(1, n_labels)]
        row = {"case_id": case_id, "grade_true": case.grade, "time": case.survival_time, "event": case.event,
               **{k: v for k, v in prediction.row.items() if k in OOF_COLUMNS and k != "case_id"},
               "dice": float(np.mean(segmentation_dice(predicted, reference, n_labels))),
               "hd95": float(np.mean(hd95)) if np.all(np.isfinite(hd95)) else None}
        if "risk_group" in row:
            row["train_risk_cutoff"] = predictor.fold_states[0].get("risk_cutoff")
        rows.append(row)
    return rows, float(np.mean(seconds)) if seconds else float("nan")


def _parameters(plan: Plan, config: TrainConfig) -> tuple[int, int]:
    """Trainable parameters of the arm's network, and of its input layers alone."""
    model = build_task(config).build_model(plan, config)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = getattr(model, "input_layers", None)
    sampling = getattr(model, "sampling", None)
    front = layers if layers is not None else sampling
    return total, sum(p.numel() for p in front.parameters()) if front is not None else 0


def _run_arm(arm: Arm, setting_dir: Path, folds: list[dict[str, list[str]]], manifest: Manifest,
             fold_setups: list[FoldSetup], config: TrainConfig,
             console: Console) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and evaluate one arm on every fold of a setting (resumable); its OOF rows and costs.

    Each fold has its own plan (planned on its training cases), hence its own run folder
    ``runs/<arm>/split_<k>/`` holding that one fold as its ``fold_0``."""
    arm_dir = setting_dir / "runs" / arm.name
    costs_path = arm_dir / "costs.json"
    if costs_path.is_file():
        saved = json.loads(costs_path.read_text(encoding="utf-8"))
        return saved["rows"], saved["costs"]
    console.rule(f"{setting_dir.name}: {arm.name}")
    rows: list[dict[str, Any]] = []
    train_s, infer = [], []
    for k, (fold, setup) in enumerate(zip(folds, fold_setups, strict=True)):
        plan = arm_plan(setup.plan, arm)
        run_config = arm_config(arm, config, plan, setup.fingerprint, setup.landmarks, len(folds))
        run_dir = arm_dir / f"split_{k}"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "splits.json").exists():
            save_folds([fold], run_dir / "splits.json")
        start = time.perf_counter()
        cases = manifest.subset([*fold["train"], *fold["val"]])
        train(cases, plan, run_dir, folds=(0,), config=run_config, resume=True,
              preprocessed_dir=setting_dir.parent / "preprocessed" / _variant_name(plan), console=console)
        train_s.append(time.perf_counter() - start)
        fold_rows, seconds = _evaluate_fold(run_dir, run_config, manifest, fold["val"])
        rows += [{**r, "fold": k, "method": arm.name} for r in fold_rows]
        infer.append(seconds)
    plan = arm_plan(fold_setups[0].plan, arm)
    total, front = _parameters(plan, arm_config(arm, config, plan, fold_setups[0].fingerprint,
                                                fold_setups[0].landmarks, len(folds)))
    costs = {"arm": arm.name, "parameters": total, "input_layer_parameters": front,
             "train_s_per_fold": float(np.mean(train_s)), "inference_s_per_case": float(np.mean(infer)),
             "learnt_steps": list(arm.learnt_steps), "layers": list(arm.layers),
             "network": arm.network or config.network}
    write_json(costs_path, {"rows": rows, "costs": costs})
    return rows, costs


@dataclass(frozen=True)
class FoldSetup:
    """What one fold's arms are built from: the plan and fingerprint of its training cases, and the monotone
    layer's standard landmarks fitted on them (None when no arm needs them)."""

    plan: Plan
    fingerprint: Fingerprint | None
    landmarks: list[list[float]] | None


def _fold_setup(manifest: Manifest, fold: dict[str, list[str]], folder: Path, out: Path, user_plan: Plan | None,
                needs_landmarks: bool) -> FoldSetup:
    """Plan the fold on its training cases (unless the user gave a plan) and fit its landmarks on them."""
    if user_plan is not None:
        plan, fingerprint = user_plan, None
    else:
        plan, fingerprint = plan_training_cases(manifest, fold["train"], folder)
    landmarks = None
    if needs_landmarks:
        minimal = with_learnt_steps(plan, ["intensity", "spacing"])
        cache = out / "preprocessed" / _variant_name(minimal)
        training = manifest.subset(fold["train"])
        preprocess_cohort(training, minimal, cache, show_progress=False)
        landmarks = _monotone_landmarks(plan, cache, training.case_ids)
    return FoldSetup(plan, fingerprint, landmarks)


def _setting_folds(setting: str, labelled: Manifest, out: Path, n_folds: int, seed: int,
                   thick_factor: float) -> tuple[Manifest, list[dict[str, list[str]]]]:
    """The cohort a setting draws on (with the thick-slice copies for ``spacing_shift``) and its folds."""
    if setting == "in_domain":
        return labelled, in_domain_folds(labelled, n_folds, seed)
    if setting == "loso":
        return labelled, leave_one_site_out_folds(labelled)
    thick = thick_slice_cohort(labelled, out / setting / f"thick_x{thick_factor:g}", thick_factor)
    combined = Manifest(channels=list(labelled.channels), cases=[*labelled.cases, *thick.cases],
                        labels=dict(labelled.labels))
    combined.save(out / setting / "manifest.json")
    return Manifest.load(out / setting / "manifest.json"), spacing_shift_folds(labelled, seed)


# ---------------------------------------------------------------------------- experiment
def run_preprocessing_experiment(manifest: Manifest, out_dir: str | Path, *, plan: Plan | None = None,
                                 n_folds: int = 5, config: TrainConfig | None = None,
                                 arms: Sequence[str] = ARMS, settings: Sequence[str] = SETTINGS,
                                 n_bootstrap: int = 1000, thick_factor: float = THICK_FACTOR,
                                 task: str = "segmentation",
                                 console: Console | None = None) -> dict[str, ComparisonResult]:
    """Run the experiment (module docstring); returns the comparison of each setting run.

    Args:
        manifest: a labelled cohort with sites (leave-one-site-out needs two or more).
        out_dir: the experiment folder (resumable).
        plan: one fixed plan for every fold. Default (recommended): each fold is planned on its own training
            cases, so nothing of its validation cases reaches the plan (:mod:`sarcomakit.experiments.protocol`).
        n_folds: folds of the in-domain cross-validation.
        config: training options shared by every arm (network, epochs, iterations, batch, seed...); the last
            epoch is kept whatever its ``checkpoint_selection``.
        arms: a subset of :data:`ARMS` (``fixed``, the reference, is always run).
        settings: a subset of :data:`SETTINGS`.
        thick_factor: slice thickness of the ``spacing_shift`` copies, as a multiple of each case's own.
        task: ``segmentation``, or ``multitask`` (segmentation, grade and survival from one network: every arm's
            grade and survival predictions are compared as well, on the same folds).
    """
    console = console or Console(stderr=True)
    if not thick_factor > 1:
        raise UserInputError(f"the thick-slice factor must be above 1, not {thick_factor}.",
                             fix="give e.g. --thick-factor 3 (slices 3 times thicker).")
    unknown = [a for a in arms if a not in ARMS] + [s for s in settings if s not in SETTINGS]
    if unknown:
        raise UserInputError(f"unknown arm(s) or setting(s) {unknown}.",
                             fix=f"arms: {', '.join(ARMS)}; settings: {', '.join(SETTINGS)}.")
    chosen = [REFERENCE, *(a for a in dict.fromkeys(arms) if a != REFERENCE)]
    labelled = manifest.subset([c.case_id for c in manifest.cases if c.label is not None])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if task not in EXPERIMENT_TASKS:
        raise UserInputError(f"unknown task {task!r} for the preprocessing experiment.",
                             fix=f"choose {' or '.join(EXPERIMENT_TASKS)}.")
    config = without_model_selection((config or TrainConfig()).updated(task=task, task_options={}))
    options = {"config": config.model_dump(mode="json"), "folds": n_folds, "thick_slice_factor": thick_factor,
               "plan": plan.model_dump(mode="json") if plan is not None else None,
               "cohort": content_digest(manifest_record(labelled))}
    _refuse_other_options(out, json_digest(options))
    needs_landmarks = any("monotone" in ARM_DEFINITIONS[a].layers for a in chosen)

    results: dict[str, ComparisonResult] = {}
    all_costs: list[dict[str, Any]] = []
    sections: list[str] = []
    for setting in settings:
        cohort, folds = _setting_folds(setting, labelled, out, n_folds, config.seed, thick_factor)
        if not folds:
            sections += [f"## {setting}", "", "Left out: the cohort has fewer than two sites.", ""]
            continue
        setting_dir = out / setting
        setting_dir.mkdir(parents=True, exist_ok=True)
        if not (setting_dir / "splits.json").exists():
            save_folds(folds, setting_dir / "splits.json")
        folds = json.loads((setting_dir / "splits.json").read_text(encoding="utf-8"))
        setups = [_fold_setup(cohort, fold, setting_dir / "plans" / f"split_{k}", out, plan, needs_landmarks)
                  for k, fold in enumerate(folds)]
        rows: list[dict[str, Any]] = []
        for name in chosen:
            arm_rows, costs = _run_arm(ARM_DEFINITIONS[name], setting_dir, folds, cohort, setups, config, console)
            rows += arm_rows
            all_costs.append({"setting": setting, **costs})
        write_oof(rows, setting_dir / OOF_FILE)
        result = compare_methods(setting_dir / OOF_FILE, reference=REFERENCE, n_bootstrap=n_bootstrap,
                                 seed=config.seed, methods=chosen)
        write_comparison(result, setting_dir)
        results[setting] = result
        learnt = [{"arm": name, "layer": layer, "learnt (fold 0)": text} for name in chosen
                  for layer, text in learnt_summary(setting_dir / "runs" / name / "split_0").items()]
        sections += [f"## {setting} ({len(folds)} folds)", "", _demoted(comparison_markdown(result)), ""]
        if learnt:
            sections += ["### What the layers learnt", "", markdown_table(pd.DataFrame(learnt)), ""]
        figure = learnt_intensity_figure([setting_dir / "runs" / name / "split_0" for name in chosen],
                                         setting_dir / "learnt_intensity.png")
        if figure is not None:
            sections += [f"![learnt intensity mappings, {setting}]({figure.relative_to(out).as_posix()})", ""]
        examples = [cohort[c] for c in folds[0]["val"][:2]]
        geometry = learnt_geometry_figure([setting_dir / "runs" / name / "split_0" for name in chosen], examples,
                                          setting_dir / "learnt_geometry.png")
        if geometry is not None:
            sections += [f"![learnt crops and sampling offsets, {setting}]({geometry.relative_to(out).as_posix()})",
                         ""]
        by_site = [c for site in sorted({str(c.site) for c in cohort.cases})
                   for c in [c for c in cohort.cases if str(c.site) == site][:2]]
        standard = intensity_by_site_figure([setting_dir / "runs" / name / "split_0" for name in chosen], by_site,
                                            setting_dir / "learnt_intensity_by_site.png")
        if standard is not None:
            sections += [f"![each site's cases on the learnt standard scale, {setting}]"
                         f"({standard.relative_to(out).as_posix()})", ""]

    costs_table = pd.DataFrame(all_costs)
    write_text(out / "costs.csv", costs_table.to_csv(index=False))
    write_text(out / "comparison.md", _report(config, chosen, plan is None, sections, costs_table))
    recorded = {"arms": chosen, "settings": list(settings), "folds": n_folds, "seed": config.seed,
                "reference": REFERENCE, "planned_per_fold": plan is None, "thick_slice_factor": thick_factor,
                "checkpoint": "last", "options_sha256": json_digest(options),
                "cohort": str(manifest.source) if manifest.source else None}
    write_json(out / "experiment.json", recorded)
    write_markdown_report(out / "comparison.md", title="Fixed vs learnt preprocessing", metadata=recorded)
    return results


def _refuse_other_options(out: Path, digest: str) -> None:
    """Finished arms are reused on a rerun, so a folder made with other options or cases must not be."""
    path = out / "experiment.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text(encoding="utf-8")).get("options_sha256")
    if stored != digest:
        raise UserInputError("this experiment folder was made with other training options, folds, thick-slice "
                             "factor, plan or cases; its finished arms cannot be reused.", path=out,
                             fix="give a new --out folder (or remove this one to start again).")


def learnt_summary(run_dir: Path, fold: int = 0) -> dict[str, str]:
    """What the input layers of one fold learnt, by layer, in words (window bounds, zooms, landmarks, offsets)."""
    import torch

    checkpoint = run_dir / f"fold_{fold}" / "checkpoint_best.pt"
    config_path = run_dir / "config.json"
    if not checkpoint.is_file() or not config_path.is_file():
        return {}
    state = load_checkpoint(checkpoint)["model"]
    specs = json.loads(config_path.read_text(encoding="utf-8"))["network_options"].get("input_layers", [])
    summary: dict[str, str] = {}
    for i, spec in enumerate(specs):
        prefix = layer_prefix(state, i)
        name = spec["layer"]
        if name == "window":
            half = torch.exp(state[prefix + "log_width"]) / 2
            low, high = state[prefix + "level"] - half, state[prefix + "level"] + half
            summary[name] = "; ".join(f"[{lo:.4g}, {hi:.4g}] (from [{a:.4g}, {b:.4g}])" for lo, hi, a, b in
                                      zip(low.tolist(), high.tolist(), spec["low"], spec["high"], strict=False))
        elif name == "zoom":
            learnt = state[prefix + "learnt"]
            zoom = torch.exp(state[prefix + "initial_log_zoom"] + learnt * (state[prefix + "log_zoom"]
                                                                            - state[prefix + "initial_log_zoom"]))
            summary[name] = "zoom (z, y, x) " + ", ".join(f"{z:.3f}" for z in zoom.tolist())
        elif name == "monotone":
            first, steps = state[prefix + "first"], state[prefix + "steps"]
            landmarks = torch.cat([first[:, None], first[:, None] + torch.cumsum(torch.nn.functional.softplus(steps),
                                                                                  1)], 1)
            summary[name] = "; ".join("landmarks " + " ".join(f"{v:.2f}" for v in row) for row in landmarks.tolist())
        elif name in ("normaliser", "resizer"):
            key = next(k for k in reversed(list(state)) if k.startswith(prefix) and k.endswith("weight"))
            summary[name] = f"residual output weights: RMS {float(state[key].pow(2).mean().sqrt()):.3g} (from 0)"
    offsets = [k for k in state if k.endswith("sampling.offsets")]
    if offsets:
        value = state[offsets[0]]
        summary["obelisk"] = (f"{value.shape[0]} offsets, mean |offset| {float(value.norm(dim=1).mean()):.3f} "
                              "(normalised units)")
    return summary


def _demoted(markdown: str) -> str:
    """A comparison's Markdown as a subsection, without the notes about tasks no arm predicts."""
    lines = [("##" + line) if line.startswith("#") else line for line in markdown.splitlines()
             if not line.startswith("- ") or "metrics left out: no" not in line]
    text = "\n".join(lines).rstrip()
    return text.removesuffix("#### Notes").rstrip()  # a notes heading left without notes


def _report(config: TrainConfig, arms: Sequence[str], planned_per_fold: bool, sections: list[str],
            costs: pd.DataFrame) -> str:
    """comparison.md: the setup, each setting's comparison, then the costs."""
    planning = ("each fold planned on its own training cases" if planned_per_fold
                else "one plan given for every fold (it may have seen validation cases)")
    lines = ["# Fixed vs learnt preprocessing", "",
             f"Arms: {', '.join(arms)}; reference: {REFERENCE} (nnU-Net-style plan, {planning}). "
             f"Task {config.task}, backbone {config.network}, "
             f"{config.epochs} epochs x {config.iterations_per_epoch} iterations, "
             f"seed {config.seed}, patch {config.patch_size or 'from the plan'}, last epoch kept. "
             "Dice and HD95 on each validation case's input grid.", "",
             *sections]
    if not costs.empty:
        shown = costs[["setting", "arm", "parameters", "input_layer_parameters", "train_s_per_fold",
                       "inference_s_per_case"]].copy()
        shown["train_s_per_fold"] = shown["train_s_per_fold"].map(lambda v: f"{v:.1f}")
        shown["inference_s_per_case"] = shown["inference_s_per_case"].map(lambda v: f"{v:.3f}")
        lines += ["## Costs", "", markdown_table(shown), ""]
    return "\n".join(lines)
