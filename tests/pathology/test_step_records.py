"""Tiles and features are reused only when built from the same slide, coordinates, options and encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from sarcomakit.pathology.features.embed import EmbedOptions, embed_cohort
from sarcomakit.pathology.features.encoders import build_encoder
from sarcomakit.pathology.pipeline import COORDS, TilingOptions, tile_cohort
from sarcomakit.pathology.wsi.h5io import load_coords
from sarcomakit.pathology.wsi.slide_manifest import load_slide_manifest
from sarcomakit.pathology.wsi.synthetic import make_synthetic_wsi_cohort, write_synthetic_slide


def test_a_changed_slide_or_option_redoes_tiles_and_a_changed_encoder_redoes_features(tmp_path: Path) -> None:
    manifest = load_slide_manifest(make_synthetic_wsi_cohort(tmp_path / "data", n_slides=3, seed=2,
                                                             size=(768, 512)))
    work = tmp_path / "work"
    options = TilingOptions(target_mpp=1.0, tile_size=48, min_tissue=0.3)
    assert len(tile_cohort(manifest, work, options, show_progress=False).results) == 3
    assert len(tile_cohort(manifest, work, options, show_progress=False).skipped) == 3

    coarser = TilingOptions(target_mpp=1.0, tile_size=64, min_tissue=0.3)
    redone = tile_cohort(manifest, work, coarser, show_progress=False)
    assert len(redone.results) == 3 and not redone.skipped
    first = manifest.slides[0]
    assert load_coords(work / COORDS / f"{first.slide_id}.h5").tile_size == 64

    # a slide file replaced under the same id (another scan, same name): that slide alone is tiled again
    write_synthetic_slide(first.path, subtype="ups", size=(640, 512), mpp=0.5, seed=99,
                          layout="svs" if first.path.suffix == ".svs" else "tiff")
    again = tile_cohort(manifest, work, coarser, show_progress=False)
    assert list(again.results) == [first.slide_id] and len(again.skipped) == 2

    encoder = build_encoder("small_cnn", input_size=48, embed_dim=16, base_width=8)
    embed = EmbedOptions(batch_size=16, num_workers=0)
    assert len(embed_cohort(manifest, work / COORDS, work / "features", encoder, embed,
                            show_progress=False).results) == 3
    assert len(embed_cohort(manifest, work / COORDS, work / "features", encoder, embed,
                            show_progress=False).skipped) == 3
    with torch.no_grad():  # other weights (e.g. a retrained encoder): other features
        next(encoder.module.parameters()).add_(0.5)
    assert len(embed_cohort(manifest, work / COORDS, work / "features", encoder, embed,
                            show_progress=False).results) == 3
