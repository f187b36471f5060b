"""Cohort steps of the whole-slide pipeline, shared by the ``sarcomakit wsi`` commands and the demo.

All steps read and write one work folder, so that they chain and resume::

    work/coords/<slide_id>.h5        tile coordinates (CLAM layout) from :func:`tile_cohort`
    work/thumbnails/<slide_id>.png   thumbnail with the tile grid
    work/features/<slide_id>.h5      patch embeddings from :func:`embed_step`
    work/ssl/encoder.pt              self-supervised encoder from :func:`pretrain_step`
    work/mil/<model>/                cross-validation run (``mil_training.cross_validate``)
    work/heatmaps/<slide_id>/        attention CSV, overlay PNG, top tiles PNG from :func:`heatmap_cohort`
    work/clusters/                   phenotype clusters from :func:`cluster_step`

Each per-slide step skips a slide whose output exists and was built from the same inputs (unless
``overwrite``), and reports failures at the end instead of stopping. Tiles and features record the slide's
content digest and their options (:class:`~sarcomakit.core.step_record.StepRecord`), so a slide replaced under
its id, another tiling resolution or another encoder redoes them. A heatmap records the checkpoints and
features it was computed from (``heatmaps/<slide_id>/source.json``) and is redone when they change, and a
held-out slide's attention is only taken from a fold model that did not train on it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.provenance import describe_value_change, file_digests, file_identity
from sarcomakit.core.step_record import StepRecord
from sarcomakit.pathology.wsi.slide_manifest import SlideManifest, SlideRecord

COORDS, THUMBNAILS, FEATURES, SSL, MIL, HEATMAPS, CLUSTERS = (
    "coords", "thumbnails", "features", "ssl", "mil", "heatmaps", "clusters")


@dataclass
class TilingOptions:
    """Tiling parameters: physical resolution, tile size, overlap (fraction of a tile), tissue threshold,
    and the level-0 mpp for slides without resolution metadata."""

    target_mpp: float = 0.5
    tile_size: int = 224
    overlap: float = 0.0
    min_tissue: float = 0.5
    mpp: float | None = None


def tile_slide_to_folder(slide: SlideRecord, work_dir: Path, options: TilingOptions) -> int:
    """Detect tissue, tile one slide, save its coordinates HDF5 and grid thumbnail; return the tile count.

    Raises:
        UserInputError: the slide cannot be read, or no tile has enough tissue.
    """
    from sarcomakit.pathology.wsi.h5io import save_coords
    from sarcomakit.pathology.wsi.reader import open_slide
    from sarcomakit.pathology.wsi.tiling import save_thumbnail_with_grid, tile_slide
    from sarcomakit.pathology.wsi.tissue import detect_tissue

    with open_slide(slide.path, mpp=options.mpp) as reader:
        tissue = detect_tissue(reader)
        grid = tile_slide(reader, target_mpp=options.target_mpp, tile_size=options.tile_size,
                          overlap=options.overlap, min_tissue=options.min_tissue, tissue=tissue)
        save_thumbnail_with_grid(reader, grid, work_dir / THUMBNAILS / f"{slide.slide_id}.png", max_size=1024,
                                 tissue=tissue)
    if len(grid.coords) == 0:
        raise UserInputError(f"no tissue found in slide {slide.slide_id!r} (0 tiles above "
                             f"{options.min_tissue:.0%} tissue).", path=slide.path,
                             fix="check the thumbnail, or lower --min-tissue.")
    save_coords(work_dir / COORDS / f"{slide.slide_id}.h5", grid, slide_name=slide.slide_id)
    StepRecord(work_dir / COORDS, "tiles").save(slide.slide_id, {"slide": slide.path}, asdict(options))
    return int(len(grid.coords))


def tile_cohort(manifest: SlideManifest, work_dir: str | Path, options: TilingOptions | None = None,
                overwrite: bool = False, show_progress: bool = True) -> CohortResult[int]:
    """Tile every slide of the manifest into ``work_dir/coords`` (resumable, failure-tolerant)."""
    work = Path(work_dir)
    options = options or TilingOptions()
    record = StepRecord(work / COORDS, "tiles")

    def done(slide: SlideRecord) -> bool:
        return not overwrite and record.is_current(slide.slide_id, {"slide": slide.path}, asdict(options),
                                                   outputs=[work / COORDS / f"{slide.slide_id}.h5"])

    return run_per_case(manifest.slides, lambda s: tile_slide_to_folder(s, work, options),
                        name=lambda s: s.slide_id, description="tile", is_done=done, show_progress=show_progress)


def slides_with(manifest: SlideManifest, work_dir: Path, kind: str) -> tuple[SlideManifest, dict[str, str]]:
    """The slides that have an output of ``kind`` (coords/features); the others as failures."""
    present, missing = [], {}
    for slide in manifest.slides:
        if (work_dir / kind / f"{slide.slide_id}.h5").is_file():
            present.append(slide)
        else:
            missing[slide.slide_id] = f"no {kind} file (run the previous step for this slide)"
    return SlideManifest(present, manifest.classes, manifest.source), missing


def pretrain_step(manifest: SlideManifest, work_dir: str | Path, encoder_name: str = "small_cnn",
                  encoder_options: dict[str, Any] | None = None, epochs: int = 10, per_slide: int = 64,
                  batch_size: int = 64, lr: float = 1e-3, stain_augment: bool = True, seed: int = 0,
                  device: str = "cpu", mpp: float | None = None, overwrite: bool = False) -> Path:
    """SimCLR-pretrain an encoder on tiles sampled from the tiled slides; returns ``work/ssl/encoder.pt``."""
    from sarcomakit.pathology.features.embed import load_grid
    from sarcomakit.pathology.features.encoders import build_encoder
    from sarcomakit.pathology.features.ssl import collect_tiles, pretrain_encoder

    work = Path(work_dir)
    out = work / SSL / "encoder.pt"
    if out.is_file() and not overwrite:
        return out
    tiled, _ = slides_with(manifest, work, COORDS)
    if not len(tiled):
        raise UserInputError("no tiled slide to pretrain on.", path=work, fix="run `sarcomakit wsi tile` first.")
    tiles = collect_tiles([(s.path, load_grid(work / COORDS / f"{s.slide_id}.h5")) for s in tiled.slides],
                          per_slide=per_slide, seed=seed, mpp=mpp)
    encoder = build_encoder(encoder_name, **(encoder_options or {}))
    stain = None
    if stain_augment:
        from sarcomakit.pathology.wsi.stain import StainAugment

        stain = StainAugment(seed=seed)
    result = pretrain_encoder(tiles, encoder, epochs=epochs, batch_size=batch_size, lr=lr, stain=stain,
                              device=device, seed=seed, out_path=out, encoder_options=encoder_options)
    write_json(work / SSL / "losses.json", {"losses": result.losses, "n_tiles": int(tiles.shape[0])})
    return out


def embed_step(manifest: SlideManifest, work_dir: str | Path, encoder_name: str = "small_cnn",
               weights: str | Path | None = None, encoder_options: dict[str, Any] | None = None,
               batch_size: int = 64, num_workers: int = 2, device: str = "cpu", mpp: float | None = None,
               overwrite: bool = False, show_progress: bool = True) -> CohortResult[Path]:
    """Embed the tiles of every tiled slide into ``work/features`` (resumable, failure-tolerant)."""
    from sarcomakit.pathology.features.embed import EmbedOptions, embed_cohort
    from sarcomakit.pathology.features.encoders import build_encoder

    work = Path(work_dir)
    encoder = build_encoder(encoder_name, weights=weights, **(encoder_options or {}))
    tiled, missing = slides_with(manifest, work, COORDS)
    outcome = embed_cohort(tiled, work / COORDS, work / FEATURES, encoder,
                           EmbedOptions(batch_size, num_workers, device, overwrite, mpp),
                           show_progress=show_progress)
    outcome.failures.update(missing)
    return outcome


def _slide_folds(model_dir: Path) -> dict[str, int]:
    folds_csv = model_dir / "folds.csv"
    if not folds_csv.is_file():
        return {}
    frame = pd.read_csv(folds_csv, dtype={"slide_id": str})
    return dict(zip(frame["slide_id"], frame["fold"].astype(int), strict=True))


def attention_checkpoints(slide_id: str, model_dir: Path) -> list[Path]:
    """The checkpoints whose attention :func:`slide_attention` averages for a slide.

    For a slide of the cross-validation run in ``model_dir``: the model of the fold that held it out. For
    any other slide: every checkpoint of the run.

    Raises:
        UserInputError: the slide's fold has no model, or the run folder has no checkpoint.
    """
    from sarcomakit.pathology.mil.training import find_checkpoints

    fold = _slide_folds(model_dir).get(slide_id)
    if fold is None:
        return find_checkpoints(model_dir)
    path = model_dir / f"fold_{fold}" / "model.pt"
    if not path.is_file():
        raise UserInputError(f"slide {slide_id!r} is held out by fold {fold}, which has no model.", path=path,
                             fix="rerun `sarcomakit wsi train` for this cohort.")
    return [path]


def slide_attention(slide_id: str, work_dir: Path, model_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Attention of a slide's tiles, with its coords and feature attributes.

    For a slide of the cross-validation run in ``model_dir`` the model of the fold that held it out is used
    (the map is then an honest held-out explanation); otherwise the mean over the run's checkpoints.

    Raises:
        UserInputError: a model to be used trained on this slide, or does not record what it trained on
            when it should have held the slide out.
    """
    from sarcomakit.pathology.mil.training import load_bag, load_mil_checkpoint, predict_bag
    from sarcomakit.pathology.wsi.h5io import load_features

    features_h5 = work_dir / FEATURES / f"{slide_id}.h5"
    bag, coords = load_bag(features_h5, slide_id)
    attrs = dict(load_features(features_h5)[2])
    held_out = slide_id in _slide_folds(model_dir)
    models = [load_mil_checkpoint(p) for p in attention_checkpoints(slide_id, model_dir)]
    for loaded in models:
        trained_on = loaded.training_slides
        if (trained_on is None and held_out) or slide_id in (trained_on or ()):
            what = "does not record the slides it was trained on" if trained_on is None else \
                f"was trained on slide {slide_id!r}"
            raise UserInputError(f"the model {what}; its attention would not be a held-out explanation.",
                                 path=loaded.path, fix="retrain with `sarcomakit wsi train --overwrite`.")
    attention = np.mean([predict_bag(m.model, bag)[1] for m in models], axis=0)
    return attention, coords, attrs


def heatmap_inputs(slide_id: str, work_dir: Path, model_dir: Path,
                   known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identity of what a slide's heatmap is computed from: its features file and the checkpoints used.

    Args:
        known: the identities recorded last time (files unchanged since are not read again).
    """
    known = known or {}
    checkpoints = {str(p.relative_to(model_dir)) if p.is_relative_to(model_dir) else str(p): p
                   for p in attention_checkpoints(slide_id, model_dir)}
    return {"features": file_identity(work_dir / FEATURES / f"{slide_id}.h5", known.get("features")),
            "checkpoints": {name: file_identity(p, known.get("checkpoints", {}).get(name))
                            for name, p in checkpoints.items()}}


def _heatmap_is_current(slide_id: str, work_dir: Path, model_dir: Path) -> bool:
    """True when the slide's heatmap exists and was computed from the current features and checkpoints."""
    out = work_dir / HEATMAPS / slide_id
    if not (out / "heatmap.png").is_file():
        return False
    try:
        recorded = json.loads((out / "source.json").read_text(encoding="utf-8"))
        current = heatmap_inputs(slide_id, work_dir, model_dir, recorded)
    except (OSError, ValueError, AttributeError, UserInputError):
        return False  # no record, or no model: the step itself runs and reports it
    return (file_digests({"features": recorded.get("features")}) == file_digests({"features": current["features"]})
            and file_digests(recorded.get("checkpoints", {})) == file_digests(current["checkpoints"]))


def heatmap_slide(slide: SlideRecord, work_dir: Path, model_dir: Path, top_k: int = 8,
                  mpp: float | None = None, thumbnail_size: int = 1024) -> dict[str, Any]:
    """Write a slide's attention CSV, overlay PNG and top-tile grid under ``work/heatmaps/<slide_id>/``."""
    from sarcomakit.pathology.analysis.heatmap import attention_table, render_heatmap, top_tiles_grid, write_table
    from sarcomakit.pathology.wsi.reader import open_slide

    source = heatmap_inputs(slide.slide_id, work_dir, model_dir)
    attention, coords, attrs = slide_attention(slide.slide_id, work_dir, model_dir)
    size_level0 = float(attrs["size_level0"])
    out = work_dir / HEATMAPS / slide.slide_id
    table = attention_table(slide.slide_id, coords, size_level0, attention)
    write_table(table, out / "attention.csv")
    with open_slide(slide.path, mpp=mpp) as reader:
        thumbnail = reader.get_thumbnail(thumbnail_size)
        render_heatmap(thumbnail, reader.dimensions, coords, size_level0, table["attention_percentile"].to_numpy(),
                       out / "heatmap.png", title=f"{slide.slide_id} ({slide.label or 'unlabelled'}): "
                                                  "attention percentile")
        top_tiles_grid(reader, table, out / "top_tiles.png", k=top_k)
    write_json(out / "source.json", source)  # last: a heatmap without it is redone
    return {"csv": out / "attention.csv", "heatmap": out / "heatmap.png", "top_tiles": out / "top_tiles.png",
            "attention": attention, "coords": coords, "size_level0": size_level0}


def heatmap_cohort(manifest: SlideManifest, work_dir: str | Path, model_dir: str | Path, top_k: int = 8,
                   mpp: float | None = None, overwrite: bool = False,
                   show_progress: bool = True) -> CohortResult[dict[str, Any]]:
    """Attention heatmaps of every embedded slide (resumable, failure-tolerant).

    A slide's heatmap is kept only when it was computed from the current features and checkpoints.
    """
    work, model_dir = Path(work_dir), Path(model_dir)
    embedded, missing = slides_with(manifest, work, FEATURES)
    outcome = run_per_case(embedded.slides, lambda s: heatmap_slide(s, work, model_dir, top_k, mpp),
                           name=lambda s: s.slide_id, description="heatmaps",
                           is_done=lambda s: not overwrite and _heatmap_is_current(s.slide_id, work, model_dir),
                           show_progress=show_progress)
    outcome.failures.update(missing)
    return outcome


@dataclass
class ClusterOutputs:
    """Files written by :func:`cluster_step` and the fitted clusters."""

    composition_csv: Path
    map_png: Path
    examples_png: Path
    n_clusters: int
    files: dict[str, Path] = field(default_factory=dict)


def cluster_step(manifest: SlideManifest, work_dir: str | Path, method: str = "kmeans", n_clusters: int = 8,
                 per_slide: int = 200, map_method: str = "pca", min_cluster_size: int = 20, seed: int = 0,
                 mpp: float | None = None, examples_per_cluster: int = 6) -> ClusterOutputs:
    """Phenotype clusters of the cohort's patch embeddings, written to ``work/clusters``."""
    from sarcomakit.pathology.analysis.clustering import (
        cluster_composition,
        cluster_example_tiles,
        embedding_map,
        fit_phenotype_clusters,
        plot_embedding_map,
        sample_embeddings,
    )
    from sarcomakit.pathology.analysis.heatmap import write_table
    from sarcomakit.pathology.wsi.h5io import load_features

    work = Path(work_dir)
    embedded, _ = slides_with(manifest, work, FEATURES)
    if not len(embedded):
        raise UserInputError("no embedded slide to cluster.", path=work, fix="run `sarcomakit wsi embed` first.")
    files = {s.slide_id: work / FEATURES / f"{s.slide_id}.h5" for s in embedded.slides}
    sample = sample_embeddings(files, per_slide, seed)
    clusters = fit_phenotype_clusters(sample.features, method, n_clusters, min_cluster_size=min_cluster_size,
                                      seed=seed)
    out = work / CLUSTERS
    composition = cluster_composition(clusters, files)
    labels = {s.slide_id: s.label for s in embedded.slides}
    composition.insert(1, "label", [labels[s] for s in composition["slide_id"]])
    write_table(composition, out / "composition.csv")
    xy = embedding_map(clusters, sample.features, map_method, seed)
    map_png = plot_embedding_map(xy, clusters.assign(sample.features), [labels[s] for s in sample.slide_ids],
                                 out / "embedding_map.png", title=f"{map_method.upper()} map")
    sizes = {s: float(load_features(p)[2]["size_level0"]) for s, p in files.items()}
    examples = cluster_example_tiles(sample, clusters, {s.slide_id: s.path for s in embedded.slides}, sizes,
                                     out / "cluster_examples.png", examples_per_cluster, mpp=mpp)
    write_json(out / "clusters.json", {"method": method, "n_clusters": clusters.n_clusters,
                                       "n_sampled_tiles": int(len(sample.features)), "map": map_method,
                                       "noise_fraction": float(np.mean(clusters.sample_labels < 0))})
    return ClusterOutputs(out / "composition.csv", map_png, examples, clusters.n_clusters)


@dataclass
class DemoOptions:
    """Settings of :func:`run_demo` (sized to finish within minutes on 2 CPU cores)."""

    n_slides: int = 18
    seed: int = 0
    slide_size: tuple[int, int] = (3072, 2048)
    slide_mpp: float = 0.5
    target_mpp: float = 0.5
    tile_size: int = 128
    min_tissue: float = 0.5
    encoder: str = "small_cnn"
    ssl_epochs: int = 0
    models: tuple[str, ...] = ("abmil", "clam_sb")
    folds: int = 3
    epochs: int = 40
    n_boot: int = 1000
    n_clusters: int = 6
    workers: int = 1


@dataclass
class DemoSummary:
    """What the demo printed and wrote."""

    lines: list[str]
    metrics: dict[str, dict[str, Any]]
    best_model: str
    agreement: pd.DataFrame
    report: Path
    seconds: float


def tumour_agreement(cohort_csv: Path, work_dir: Path) -> pd.DataFrame:
    """Per slide: attention inside the true tumour mask vs outside (synthetic cohorts carry the masks)."""
    from sarcomakit.pathology.analysis.heatmap import attention_mask_agreement, tile_mask_fraction

    cohort = pd.read_csv(cohort_csv, dtype={"slide_id": str})
    rows = []
    for row in cohort.itertuples():
        table_path = work_dir / HEATMAPS / row.slide_id / "attention.csv"
        if not table_path.is_file():
            continue
        table = pd.read_csv(table_path)
        mask = np.load(cohort_csv.parent / row.tumour_mask)
        inside = tile_mask_fraction(mask, float(row.mask_downsample), table[["x", "y"]].to_numpy(),
                                    float(table["size_level0"].iloc[0]))
        rows.append({"slide_id": row.slide_id, "label": row.label,
                     **attention_mask_agreement(table["attention"].to_numpy(), inside)})
    return pd.DataFrame(rows)


def _claim_demo_folder(work: Path, options: DemoOptions, overwrite: bool) -> None:
    """Refuse a demo folder made with other options (its cohort, tiles and models would be reused), then record
    these options. A folder from before the record existed is adopted: its fold models and heatmaps are checked
    by their own records."""
    record_path = work / "demo_options.json"
    current = json.loads(json.dumps({k: v for k, v in asdict(options).items() if k != "workers"}))
    if record_path.is_file() and not overwrite:
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        changes = describe_value_change(recorded, current) if isinstance(recorded, dict) else "unreadable record"
        if changes:
            raise UserInputError(f"holds a demo made with other options ({changes}).", path=work,
                                 fix="use a new --out folder, or --overwrite to start fresh.")
    write_json(record_path, current)


def run_demo(out_dir: str | Path, options: DemoOptions | None = None, overwrite: bool = False) -> DemoSummary:
    """The whole pipeline on a synthetic cohort, ending in an HTML report.

    Steps: synthetic slides (three subtypes) -> tissue detection and tiling -> patch embeddings (small CNN;
    optional SimCLR pretraining first) -> patient-grouped cross-validation of each MIL model -> attention
    heatmaps from the held-out fold models, checked against the true tumour masks -> phenotype clusters ->
    ``report.html``. Steps whose outputs exist are reused unless ``overwrite``; a folder holding a demo made
    with other options (``work/demo_options.json``; only ``workers`` may change) is refused unless ``overwrite``.

    Returns:
        The :class:`DemoSummary`; ``lines`` is the printed summary (held-out macro AUC with its interval,
        attention-tumour agreement, where the report is).
    """
    from sarcomakit.pathology.analysis.report import format_metrics, write_demo_report
    from sarcomakit.pathology.mil.training import MILTrainConfig, cross_validate
    from sarcomakit.pathology.wsi.slide_manifest import load_slide_manifest
    from sarcomakit.pathology.wsi.synthetic import make_synthetic_wsi_cohort

    options = options or DemoOptions()
    work = Path(out_dir)
    _claim_demo_folder(work, options, overwrite)
    timings: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 1)
        clock = now

    cohort_csv = work / "data" / "slides.csv"
    if overwrite or not cohort_csv.is_file():
        cohort_csv = make_synthetic_wsi_cohort(work / "data", options.n_slides, options.seed, options.slide_size,
                                               options.slide_mpp)
    manifest = load_slide_manifest(cohort_csv, require_labels=True)
    lap("synthetic slides")
    tiled = tile_cohort(manifest, work, TilingOptions(options.target_mpp, options.tile_size, 0,
                                                      options.min_tissue), overwrite)
    lap("tissue detection and tiling")
    encoder_options = {"input_size": options.tile_size}
    weights = None
    if options.ssl_epochs > 0:
        weights = pretrain_step(manifest, work, options.encoder, encoder_options, options.ssl_epochs,
                                seed=options.seed, overwrite=overwrite)
        lap("SSL pretraining")
    embedded = embed_step(manifest, work, options.encoder, weights, encoder_options, num_workers=options.workers,
                          overwrite=overwrite)
    lap("embedding")
    metrics: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for model in options.models:
        # A demo cohort has a handful of slides per class: an inner validation split would leave too few to
        # train on, so the demo trains a fixed number of epochs (val_fraction=0).
        config = MILTrainConfig(model=model, epochs=options.epochs, val_fraction=0.0, seed=options.seed)
        result = cross_validate(manifest, work / FEATURES, work / MIL / model, config, options.folds,
                                options.n_boot, overwrite)
        metrics[model] = result.metrics
        lines.append(format_metrics(result.metrics, f"{model}: held-out slides, {options.folds}-fold "
                                                    "patient-grouped cross-validation"))
        lap(f"MIL {model}")
    best = max(metrics, key=lambda m: metrics[m]["macro_auc"].value)
    heatmaps = heatmap_cohort(manifest, work, work / MIL / best, overwrite=overwrite)
    lap("heatmaps")
    agreement = tumour_agreement(cohort_csv, work)
    clusters = cluster_step(manifest, work, n_clusters=options.n_clusters, seed=options.seed)
    lap("clustering")
    ids = manifest.ids
    shown = [ids[i] for i in np.linspace(0, len(ids) - 1, min(6, len(ids))).astype(int)]
    report = write_demo_report(
        work / "report.html", cohort=manifest.to_frame().drop(columns=["path", "fold"]),
        cv_metrics=metrics, best_model=best,
        agreement=agreement.round(4) if len(agreement) else agreement,
        heatmap_pngs=[p for s in shown if (p := work / HEATMAPS / s / "heatmap.png").is_file()],
        top_tile_pngs=[p for s in shown[:3] if (p := work / HEATMAPS / s / "top_tiles.png").is_file()],
        thumbnails=[p for s in shown[:3] if (p := work / THUMBNAILS / f"{s}.png").is_file()],
        cluster_map=clusters.map_png, cluster_examples=clusters.examples_png,
        composition=pd.read_csv(clusters.composition_csv).round(3), timings=timings,
        notes=[f"{len(manifest)} slides of {options.slide_size[0]}x{options.slide_size[1]} px at "
               f"{options.slide_mpp} um/px; tiles of {options.tile_size} px at {options.target_mpp} um/px; "
               f"encoder {options.encoder}" + (" (SimCLR-pretrained)" if weights else " (random init)") + "."])
    lap("report")
    failures = {**tiled.failures, **embedded.failures, **heatmaps.failures}
    total = time.perf_counter() - start
    best_auc = metrics[best]["macro_auc"]
    lines.append(f"best model: {best}; held-out macro AUC {best_auc}")
    if len(agreement):
        lines.append(f"attention vs true tumour ({len(agreement)} held-out slides): mean attention inside / "
                     f"outside = {agreement['ratio'].median():.2f} (median), tile AUC "
                     f"{agreement['auc'].median():.3f} (median), share of attention on tumour "
                     f"{agreement['share_inside'].mean():.0%} (mean; tumour tiles are "
                     f"{(agreement['n_inside'] / agreement['n_tiles']).mean():.0%} of tiles)")
    for slide_id, message in failures.items():
        lines.append(f"failed {slide_id}: {message}")
    lines.append(f"report: {report} ({total:.0f} s)")
    return DemoSummary(lines, metrics, best, agreement, report, total)
