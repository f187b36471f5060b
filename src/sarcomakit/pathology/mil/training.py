"""Training slide-level MIL models on feature bags: patient-grouped cross-validation, checkpoints, prediction.

Each slide is a bag of patch embeddings read from its feature HDF5 (``features`` (N, D), ``coords`` (N, 2)).
Models are trained one bag at a time with Adam; class imbalance is handled by class-balanced sampling of
the bags (or class weights in the loss); training stops early when the loss on an inner validation split of
the training patients stops improving, and the best state is kept.

Cross-validation folds are grouped by patient (``StratifiedGroupKFold``) so that no patient's slides are on
both sides; the out-of-fold predictions are written to ``oof_predictions.csv`` and scored by
:func:`sarcomakit.pathology.analysis.metrics.classification_metrics`.

Run folder of :func:`cross_validate`::

    out_dir/folds.csv                 slide_id, patient_id, label, fold
    out_dir/fold_<k>/model.pt         checkpoint (model name and options, classes, weights, history, inputs)
    out_dir/oof_predictions.csv       slide_id, patient_id, label, fold, prediction, prob_<class>...
    out_dir/metrics.json              metrics with bootstrap 95% intervals

A fold's checkpoint records what the model was trained from (:func:`fold_inputs`: its training slides
with their labels, patients and the SHA-256 of their feature bags, the classes and the training options
but the device). A rerun reuses the checkpoint only when these are the same; otherwise the fold is
retrained, because a model kept from other folds may have trained on the slides it now predicts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from sarcomakit.core.cohort_runner import CohortResult
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json
from sarcomakit.core.provenance import array_digest, describe_id_change, describe_value_change, examples
from sarcomakit.pathology.analysis.metrics import classification_metrics, metrics_to_json
from sarcomakit.pathology.mil.models import StandardizedMIL, build_mil_model, mil_loss
from sarcomakit.pathology.wsi.slide_manifest import SlideManifest, SlideRecord
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.training.callbacks import EarlyStopping
from sarcomakit.training.trainer import Callback, Trainer, unwrap

log = logging.getLogger("sarcomakit")


@dataclass
class MILTrainConfig:
    """How a MIL model is trained.

    Attributes:
        model: registry name (``abmil``, ``clam_sb``, ``transmil``).
        model_options: keyword options of the model.
        epochs: maximum passes over the training bags.
        lr, weight_decay: Adam's learning rate and L2 penalty.
        patience: epochs without improvement of the validation loss before stopping.
        balance: ``sampler`` (draw bags with probability inverse to their class frequency), ``loss``
            (class-weighted cross-entropy) or ``none``.
        max_instances: a random subset of at most this many instances per bag in training (None: all).
        val_fraction: share of the training patients held out for early stopping (0: no early stopping).
        standardize: standardise each feature dimension with the training instances' mean and std.
        seed: random seed.
        device: torch device.
    """

    model: str = "abmil"
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 40
    lr: float = 2e-4
    weight_decay: float = 1e-4
    patience: int = 8
    balance: str = "sampler"
    max_instances: int | None = 4096
    val_fraction: float = 0.2
    standardize: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.balance not in ("sampler", "loss", "none"):
            raise UserInputError(f"unknown balance {self.balance!r}.", fix="use sampler, loss or none.")


def feature_path(features_dir: str | Path, slide_id: str) -> Path:
    """Where the feature HDF5 of a slide lives."""
    return Path(features_dir) / f"{slide_id}.h5"


def load_bag(path: str | Path, slide_id: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Read a slide's bag: features (N, D) as float32 tensor and coords (N, 2).

    Raises:
        UserInputError: the file is missing or unreadable, or the bag is empty; the message names the slide.
    """
    from sarcomakit.pathology.wsi.h5io import load_features

    path = Path(path)
    name = slide_id or path.stem
    if not path.is_file():
        raise UserInputError(f"no feature file for slide {name!r}.", path=path,
                             fix="run `sarcomakit wsi embed` for this slide first.")
    try:
        features, coords, _ = load_features(path)
    except UserInputError:
        raise
    except Exception as exc:  # unreadable file: report it for this slide only
        raise UserInputError(f"cannot read the features of slide {name!r} ({exc}).", path=path) from exc
    if features.ndim != 2 or features.shape[0] == 0:
        raise UserInputError(f"slide {name!r} has an empty bag (no tiles with tissue).", path=path,
                             fix="check its tissue detection, or lower --min-tissue when tiling.")
    return torch.as_tensor(np.asarray(features, dtype=np.float32)), np.asarray(coords)


def load_bags(manifest: SlideManifest, features_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Bags of every slide of the manifest; slides whose bag cannot be read are returned as failures."""
    bags: dict[str, torch.Tensor] = {}
    failures: dict[str, str] = {}
    for slide in manifest.slides:
        try:
            bags[slide.slide_id] = load_bag(feature_path(features_dir, slide.slide_id), slide.slide_id)[0]
        except UserInputError as exc:
            failures[slide.slide_id] = str(exc)
    return bags, failures


@dataclass
class TrainedMIL:
    """A trained model with its training history (per-epoch losses) and best epoch."""

    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int


def _class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


class BagDataset(torch.utils.data.Dataset):
    """One (bag, label) per item; each epoch visits the bags in a new random order (with ``balance="sampler"``, drawn
    with replacement in inverse proportion to class frequency) and caps a bag at ``max_instances`` random instances.
    Deterministic for (seed, epoch, index)."""

    def __init__(self, bags: Sequence[torch.Tensor], labels: np.ndarray, balance: str, max_instances: int | None,
                 seed: int) -> None:
        self.bags, self.labels = list(bags), labels
        self.balance, self.max_instances, self.seed = balance, max_instances, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng((self.seed, epoch))
        if self.balance != "sampler":
            self.order = rng.permutation(self.labels.size)
        else:
            prob = 1.0 / np.bincount(self.labels)[self.labels]
            self.order = rng.choice(self.labels.size, size=self.labels.size, replace=True, p=prob / prob.sum())

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.order[index])
        bag = self.bags[i]
        if self.max_instances and bag.shape[0] > self.max_instances:
            rng = np.random.default_rng((self.seed, self.epoch, index, 1))
            bag = bag[torch.as_tensor(rng.choice(bag.shape[0], self.max_instances, replace=False))]
        return bag, torch.tensor([int(self.labels[i])])


class MILObjective(Objective):
    """Slide-level cross-entropy (class-weighted with ``balance="loss"``), mixed with CLAM's instance loss."""

    def __init__(self, class_weights: torch.Tensor | None) -> None:
        super().__init__()
        self.class_weights = class_weights

    def forward(self, model: torch.nn.Module, batch: Any, device: torch.device) -> LossOutput:
        bag, target = batch[0].to(device), batch[1].to(device)
        out = model(bag, label=target)
        weights = None if self.class_weights is None else self.class_weights.to(device)
        return LossOutput(mil_loss(unwrap(model), out, target, weights))


class _ValidationLoss(Callback):
    """Adds the validation loss (and its negative as ``val_score``, higher is better) to each epoch's record and keeps
    the weights of the best epoch in memory."""

    def __init__(self, bags: Sequence[torch.Tensor], labels: Sequence[int], device: str) -> None:
        self.bags, self.labels, self.device = bags, labels, device
        self.best_loss, self.best_epoch = math.inf, -1
        self.best_state: dict[str, Any] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        loss = evaluate_loss(trainer.model, self.bags, self.labels, self.device)
        record.update({"val_loss": loss, "val_score": -loss})
        if loss < self.best_loss - 1e-4:
            self.best_loss, self.best_epoch = loss, int(record["epoch"])
            self.best_state = copy.deepcopy(trainer.model.state_dict())


def evaluate_loss(model: torch.nn.Module, bags: Sequence[torch.Tensor], labels: Sequence[int],
                  device: str = "cpu") -> float:
    """Mean slide-level cross-entropy of ``model`` (eval mode) over the bags."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for bag, label in zip(bags, labels, strict=True):
            logits = model(bag.to(device))["logits"]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor([label], device=device)))
    return total / max(len(bags), 1)


def train_mil(bags: Sequence[torch.Tensor], labels: Sequence[int], n_classes: int, config: MILTrainConfig,
              val_bags: Sequence[torch.Tensor] = (), val_labels: Sequence[int] = ()) -> TrainedMIL:
    """Train a MIL model on bags with slide labels, on the project's :class:`~sarcomakit.training.trainer.Trainer`
    (one bag per step; validation loss, best weights and early stopping are callbacks).

    Args:
        bags: training bags (N_i, D).
        labels: class index per bag.
        n_classes: number of classes.
        config: the :class:`MILTrainConfig`.
        val_bags, val_labels: bags for early stopping on the validation loss; without them the model of the
            last epoch is kept.

    Returns:
        The :class:`TrainedMIL` (model in eval mode, with the weights of the best validation epoch).
    """
    if not bags:
        raise UserInputError("no training slides with features.")
    label_array = np.asarray(labels, dtype=int)
    # seeded weights and training (dropout, instance sampling) without touching the caller's random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_mil_model(config.model, in_dim=int(bags[0].shape[1]), n_classes=n_classes,
                                **config.model_options)
        if config.standardize:
            instances = torch.cat(list(bags)).float()
            model = StandardizedMIL(model, instances.mean(0), instances.std(0))
        model = model.to(config.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        class_weights = _class_weights(label_array, n_classes) if config.balance == "loss" else None
        loader = torch.utils.data.DataLoader(
            BagDataset(bags, label_array, config.balance, config.max_instances, config.seed), batch_size=None)
        validation = _ValidationLoss(val_bags, val_labels, config.device) if len(val_bags) else None
        callbacks: list[Callback] = [] if validation is None else \
            [validation, EarlyStopping("val_score", config.patience, min_delta=1e-4)]
        trainer = Trainer(model, MILObjective(class_weights), optimizer, loader, device=torch.device(config.device),
                          epochs=config.epochs, callbacks=callbacks)
        state = trainer.fit()
    history = [{"epoch": int(r["epoch"]) + 1, "train_loss": r["train_loss"],
                **({"val_loss": r["val_loss"]} if "val_loss" in r else {})} for r in state.history]
    best_epoch = len(history)
    if validation is not None and validation.best_state is not None:
        model.load_state_dict(validation.best_state)
        best_epoch = validation.best_epoch + 1
    model.eval()
    return TrainedMIL(model, history, best_epoch)


def predict_bag(model: torch.nn.Module, bag: torch.Tensor, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (C,) and attention per instance (N,) of one bag (eval mode, no gradient)."""
    model.eval()
    with torch.no_grad():
        out = model(bag.to(device))
    proba = torch.softmax(out["logits"], dim=1)[0].cpu().numpy()
    attention = out["attention"][0]
    if attention.ndim == 2:  # (C, N): per-class attention, keep the predicted class's
        attention = attention[int(proba.argmax())]
    return proba, attention.cpu().numpy()


def save_mil_checkpoint(path: str | Path, trained: TrainedMIL, config: MILTrainConfig, classes: Sequence[str],
                        in_dim: int, extra: dict[str, Any] | None = None) -> Path:
    """Save a trained model with what is needed to rebuild it (atomically)."""
    payload = {"model": config.model, "model_options": config.model_options, "in_dim": in_dim,
               "standardize": isinstance(trained.model, StandardizedMIL),
               "classes": list(classes), "state_dict": trained.model.state_dict(),
               "config": json.dumps(asdict(config)), "history": json.dumps(trained.history),
               "best_epoch": trained.best_epoch, "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


@dataclass
class LoadedMIL:
    """A MIL model restored from a checkpoint, with its classes, input width and the ``extra`` it was saved with
    (for a cross-validation fold: ``fold`` and ``inputs``, see :func:`fold_inputs`)."""

    model: torch.nn.Module
    classes: list[str]
    in_dim: int
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def training_slides(self) -> set[str] | None:
        """The slides the model was trained on (None when the checkpoint does not record them)."""
        train = self.extra.get("inputs", {}).get("train")
        return set(train) if isinstance(train, dict) else None


def load_mil_checkpoint(path: str | Path) -> LoadedMIL:
    """Rebuild a model saved by :func:`save_mil_checkpoint` (eval mode, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("MIL checkpoint not found.", path=path, fix="give a model.pt from `wsi train`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        in_dim = int(payload["in_dim"])
        model = build_mil_model(payload["model"], in_dim=in_dim, n_classes=len(payload["classes"]),
                                **payload["model_options"])
        if payload.get("standardize"):
            model = StandardizedMIL(model, torch.zeros(in_dim), torch.ones(in_dim))
        model.load_state_dict(payload["state_dict"])
        extra = json.loads(payload.get("extra") or "{}")
    except UserInputError:
        raise
    except Exception as exc:  # a file that is not one of our checkpoints
        raise UserInputError(f"not a sarcomakit MIL checkpoint ({type(exc).__name__}: {exc}).", path=path) from exc
    model.eval()
    return LoadedMIL(model, list(payload["classes"]), int(payload["in_dim"]), path, extra)


def find_checkpoints(source: str | Path) -> list[Path]:
    """A checkpoint file, or every ``fold_*/model.pt`` (or ``model.pt``) under a training run folder."""
    source = Path(source)
    if source.is_file():
        return [source]
    found = sorted(source.glob("fold_*/model.pt")) or sorted(source.glob("model.pt"))
    if not found:
        raise UserInputError("no MIL checkpoint (model.pt or fold_*/model.pt) found.", path=source,
                             fix="give the output folder of `sarcomakit wsi train` or a model.pt.")
    return found


def make_patient_folds(manifest: SlideManifest, n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Fold index per slide, grouped by patient and stratified by label.

    The manifest's own ``fold`` column is used when every slide has one.

    Raises:
        UserInputError: fewer patients than folds.
    """
    slides = manifest.slides
    if slides and all(s.fold is not None for s in slides):
        return {s.slide_id: int(s.fold) for s in slides}  # type: ignore[arg-type]
    patients = {s.patient_id for s in slides}
    if len(patients) < n_folds:
        raise UserInputError(f"{len(patients)} patient(s) cannot fill {n_folds} folds.",
                             fix="lower --folds or add slides.")
    labels = [manifest.label_index(s) for s in slides]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(slides)), labels,
                                                     [s.patient_id for s in slides])):
        for i in test_idx:
            folds[slides[i].slide_id] = k
    return folds


def _inner_split(ids: list[str], labels: list[int], patients: list[str], fraction: float,
                 seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of a patient-grouped, stratified split for early stopping."""
    counts = np.bincount(labels)
    # As many splits as 1 / fraction asks, but no more than the smallest class can stratify.
    n_splits = min(round(1 / fraction), int(counts[counts > 0].min())) if fraction > 0 else 0
    if n_splits < 2 or len(set(patients)) < n_splits:
        return list(range(len(ids))), []
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(ids)), labels, patients))
    return train_idx.tolist(), val_idx.tolist()


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`; ``retrained`` says, for each fold whose existing model was built from
    other inputs and was trained again, what had changed."""

    out_dir: Path
    predictions: pd.DataFrame
    metrics: dict[str, Any]
    failures: dict[str, str]
    attention: dict[str, np.ndarray]
    retrained: dict[int, str] = field(default_factory=dict)


def fold_inputs(train: Sequence[SlideRecord], bag_digests: dict[str, str], classes: Sequence[str],
                config: MILTrainConfig) -> dict[str, Any]:
    """What a fold's model is trained from, as JSON-ready values (module docstring).

    The inner early-stopping split follows from these (slides, labels, patients, seed), and the held-out
    slides do not enter the model, so neither is recorded.
    """
    options = {k: v for k, v in asdict(config).items() if k != "device"}
    record = {"train": {s.slide_id: {"label": s.label, "patient_id": s.patient_id,
                                     "features_sha256": bag_digests[s.slide_id]} for s in train},
              "classes": list(classes), "config": options}
    return json.loads(json.dumps(record))  # the form it has once read back from a checkpoint


def describe_fold_changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """What differs between a fold model's recorded inputs and the current ones (None: nothing)."""
    if not recorded:
        return "its checkpoint does not record what it was trained on"
    old, new = recorded.get("train", {}), current["train"]
    changes = [describe_id_change(old, new, "training slides"),
               describe_value_change({"classes": recorded.get("classes")}, {"classes": current["classes"]}),
               describe_value_change(recorded.get("config", {}), current["config"])]
    changed = [sid for sid in sorted(set(old) & set(new)) if old[sid] != new[sid]]
    if changed:
        changes.append(f"features, label or patient of {len(changed)} training slide(s) changed ({examples(changed)})")
    text = "; ".join(c for c in changes if c)
    return text or None


def cross_validate(manifest: SlideManifest, features_dir: str | Path, out_dir: str | Path,
                   config: MILTrainConfig, n_folds: int = 5, n_boot: int = 1000,
                   overwrite: bool = False) -> CVResult:
    """Patient-grouped k-fold cross-validation of a MIL model on the cohort's feature bags.

    Each fold's model is trained on the other folds (minus an inner validation split for early stopping)
    and predicts its held-out slides. A fold whose checkpoint exists is reused unless ``overwrite``, and
    only when it was trained from the same inputs (module docstring); otherwise the fold is retrained.
    Slides whose bag is missing or empty are reported in ``failures`` and left out; the others go on.

    Args:
        manifest: labelled slides.
        features_dir: folder of ``<slide_id>.h5`` feature files.
        out_dir: the run folder (layout in the module docstring).
        config: training options.
        n_folds: number of folds (ignored when the manifest gives folds).
        n_boot: bootstrap resamples for the metric intervals.
        overwrite: retrain folds that already have a checkpoint.

    Returns:
        The :class:`CVResult` with out-of-fold predictions, metrics, failures and held-out attention.
    """
    out_dir = Path(out_dir)
    manifest = manifest.labelled()
    bags, failures = load_bags(manifest, features_dir)
    usable = manifest.subset(list(bags))
    if len(usable) < 2:
        raise UserInputError(f"only {len(usable)} slide(s) have features; cross-validation needs more.",
                             fix="embed the slides first (`sarcomakit wsi embed`).")
    folds = make_patient_folds(usable, n_folds, config.seed)
    fold_ids = sorted(set(folds.values()))
    classes = usable.classes
    frame = usable.to_frame().assign(fold=[folds[s] for s in usable.ids])
    with atomic_path(out_dir / "folds.csv") as tmp:
        frame[["slide_id", "patient_id", "label", "fold"]].to_csv(tmp, index=False)
    rows: list[dict[str, Any]] = []
    attention: dict[str, np.ndarray] = {}
    in_dim = int(next(iter(bags.values())).shape[1])
    digests = {slide_id: array_digest(bag) for slide_id, bag in bags.items()}
    retrained: dict[int, str] = {}
    trained_folds = [k for k in fold_ids if 0 < sum(f == k for f in folds.values()) < len(folds)]
    _remove_other_folds(out_dir, trained_folds)
    for k in trained_folds:
        test = [s for s in usable.slides if folds[s.slide_id] == k]
        train = [s for s in usable.slides if folds[s.slide_id] != k]
        ckpt = out_dir / f"fold_{k}" / "model.pt"
        inputs = fold_inputs(train, digests, classes, config)
        reused = None
        if ckpt.is_file() and not overwrite:
            reused = load_mil_checkpoint(ckpt)
            if (changes := describe_fold_changes(reused.extra.get("inputs"), inputs)) is not None:
                log.warning("fold %d: retraining, its model in %s was trained from other inputs (%s)",
                            k, ckpt.parent, changes)
                retrained[k], reused = changes, None
        if reused is not None:
            model = reused.model
        else:
            train_labels = [usable.label_index(s) for s in train]
            inner_train, inner_val = _inner_split([s.slide_id for s in train], train_labels,
                                                  [s.patient_id for s in train], config.val_fraction,
                                                  config.seed + k)
            trained = train_mil([bags[train[i].slide_id] for i in inner_train],
                                [train_labels[i] for i in inner_train], len(classes), config,
                                [bags[train[i].slide_id] for i in inner_val],
                                [train_labels[i] for i in inner_val])
            save_mil_checkpoint(ckpt, trained, config, classes, in_dim, {"fold": k, "inputs": inputs})
            model = trained.model
        for s in test:
            proba, att = predict_bag(model, bags[s.slide_id], config.device)
            attention[s.slide_id] = att
            rows.append({"slide_id": s.slide_id, "patient_id": s.patient_id, "label": s.label, "fold": k,
                         "prediction": classes[int(proba.argmax())],
                         **{f"prob_{c}": float(p) for c, p in zip(classes, proba, strict=True)}})
    predictions = pd.DataFrame(rows)
    with atomic_path(out_dir / "oof_predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    y = [classes.index(label) for label in predictions["label"]]
    proba = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    metrics = classification_metrics(y, proba, classes, n_boot=n_boot, seed=config.seed,
                                     groups=predictions["patient_id"].tolist())
    write_json(out_dir / "metrics.json", {"model": config.model, "n_folds": len(fold_ids),
                                          "failures": failures, **metrics_to_json(metrics)})
    return CVResult(out_dir, predictions, metrics, failures, attention, retrained)


def _remove_other_folds(out_dir: Path, kept: Sequence[int]) -> None:
    """Remove ``fold_<k>`` folders of folds this run does not have: an earlier run's models, which every reader
    of the run folder (``find_checkpoints``, heatmaps) would otherwise take for this run's."""
    for folder in sorted(out_dir.glob("fold_*")):
        suffix = folder.name[len("fold_"):]
        if folder.is_dir() and suffix.isdigit() and int(suffix) not in kept:
            log.warning("removing %s: a fold of an earlier run with other folds", folder)
            shutil.rmtree(folder)


def predict_slides(checkpoints: Sequence[str | Path], manifest: SlideManifest, features_dir: str | Path,
                   out_csv: str | Path | None = None) -> tuple[pd.DataFrame, CohortResult[np.ndarray]]:
    """Predict new slides with one model or the mean of several (e.g. the fold models of a run).

    Args:
        checkpoints: model files from :func:`save_mil_checkpoint` (same classes).
        manifest: the slides to predict (labels optional).
        features_dir: folder of their feature files.
        out_csv: where to write the predictions (slide_id, prediction, prob_<class>..., label if known).

    Returns:
        (predictions table, cohort result whose results are the mean attention per slide and whose
        failures name the slides without a usable bag).
    """
    from sarcomakit.core.cohort_runner import run_per_case

    models = [load_mil_checkpoint(p) for p in checkpoints]
    classes = models[0].classes
    if any(m.classes != classes for m in models):
        raise UserInputError("the checkpoints were trained on different class lists.")
    rows: list[dict[str, Any]] = []

    def predict_one(slide: Any) -> np.ndarray:
        bag, _ = load_bag(feature_path(features_dir, slide.slide_id), slide.slide_id)
        if bag.shape[1] != models[0].in_dim:
            raise UserInputError(f"slide {slide.slide_id!r} has {bag.shape[1]}-wide features; the model expects "
                                 f"{models[0].in_dim}.", fix="embed with the encoder used for training.")
        outputs = [predict_bag(m.model, bag) for m in models]
        proba = np.mean([o[0] for o in outputs], axis=0)
        rows.append({"slide_id": slide.slide_id, "label": slide.label, "prediction": classes[int(proba.argmax())],
                     **{f"prob_{c}": float(p) for c, p in zip(classes, proba, strict=True)}})
        return np.mean([o[1] for o in outputs], axis=0)

    outcome = run_per_case(manifest.slides, predict_one, name=lambda s: s.slide_id, description="predict")
    predictions = pd.DataFrame(rows)
    if out_csv is not None and len(predictions):
        with atomic_path(out_csv) as tmp:
            predictions.to_csv(tmp, index=False)
    return predictions, outcome
