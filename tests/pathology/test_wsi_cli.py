"""`sarcomakit wsi` end to end on tiny synthetic slides, through the real CLI app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from figure_checks import read_png
from sarcomakit.cli.main import app
from sarcomakit.pathology.wsi.synthetic import make_synthetic_wsi_cohort, write_synthetic_slide

runner = CliRunner()


def chromatic_fraction(path: Path) -> float:
    """The fraction of a PNG's pixels in colour (not grey): stained tissue, heat colours, coloured dots.

    Axes, text and anti-aliasing are grey, so a figure whose tiles or overlay are missing scores near 0.
    """
    pixels = read_png(path).astype(int)
    return float(np.mean(pixels.max(axis=-1) - pixels.min(axis=-1) > 40))


def _invoke(*args: str) -> object:
    return runner.invoke(app, ["wsi", *args], catch_exceptions=False)


@pytest.mark.slow
def test_wsi_commands_end_to_end(tmp_path: Path) -> None:
    slides_csv = make_synthetic_wsi_cohort(tmp_path / "data", n_slides=6, seed=1, size=(1024, 768))
    work = tmp_path / "work"
    csv = str(slides_csv)

    result = _invoke("tile", csv, "--out", str(work), "--target-mpp", "1.0", "--tile-size", "48",
                     "--min-tissue", "0.3")
    assert result.exit_code == 0, result.output
    assert len(list((work / "coords").glob("*.h5"))) == 6 and len(list((work / "thumbnails").glob("*.png"))) == 6
    again = _invoke("tile", csv, "--out", str(work), "--target-mpp", "1.0", "--tile-size", "48", "--min-tissue", "0.3")
    assert again.exit_code == 0 and "6 skipped" in again.output

    result = _invoke("pretrain", csv, "--out", str(work), "--encoder", "small_cnn", "--input-size", "48",
                     "--epochs", "1", "--tiles-per-slide", "6", "--batch-size", "12")
    assert result.exit_code == 0, result.output
    weights = work / "ssl" / "encoder.pt"
    assert weights.is_file()

    result = _invoke("embed", csv, "--out", str(work), "--encoder", "small_cnn", "--weights", str(weights),
                     "--workers", "0", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    assert len(list((work / "features").glob("*.h5"))) == 6

    result = _invoke("train", csv, "--out", str(work), "--model", "abmil", "--folds", "2", "--epochs", "3",
                     "--bootstrap", "50", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    assert "macro AUC" in result.output
    oof = pd.read_csv(work / "mil" / "abmil" / "oof_predictions.csv")
    assert len(oof) == 6

    result = _invoke("predict", csv, "--out", str(work), "--model", str(work / "mil" / "abmil"))
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(work / "predictions.csv")) == 6

    result = _invoke("heatmap", csv, "--out", str(work), "--model", str(work / "mil" / "abmil"), "--top-k", "4")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(work / "heatmaps" / "slide_000" / "attention.csv")
    assert list(table.columns) == ["slide_id", "x", "y", "size_level0", "attention", "attention_percentile"]
    assert abs(table["attention"].sum() - 1) < 1e-4
    # the stained slide under the heat colours, and the tiles themselves (layout: test_heatmap.py)
    assert chromatic_fraction(work / "heatmaps" / "slide_000" / "heatmap.png") > 0.05
    assert chromatic_fraction(work / "heatmaps" / "slide_000" / "top_tiles.png") > 0.05

    result = _invoke("cluster", csv, "--out", str(work), "--clusters", "3", "--tiles-per-slide", "30")
    assert result.exit_code == 0, result.output
    composition = pd.read_csv(work / "clusters" / "composition.csv")
    assert len(composition) == 6 and {"cluster_0", "cluster_1", "cluster_2"} <= set(composition.columns)
    # the map's dots (a few thousand pixels; its colours: test_clustering.py) and the example tiles
    assert chromatic_fraction(work / "clusters" / "embedding_map.png") > 0.005
    assert chromatic_fraction(work / "clusters" / "cluster_examples.png") > 0.05


def test_wsi_bad_input_exit_codes(tmp_path: Path) -> None:
    missing = _invoke("tile", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "w"))
    assert missing.exit_code == 2 and "not found" in missing.output
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    pd.DataFrame([{"slide_id": "b1", "path": str(broken), "label": "x", "patient_id": "p"}]).to_csv(
        tmp_path / "slides.csv", index=False)
    failed = _invoke("tile", str(tmp_path / "slides.csv"), "--out", str(tmp_path / "w"))
    assert failed.exit_code == 1 and "b1" in failed.output and "1 failed" in failed.output


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("one_slide")
    return write_synthetic_slide(folder / "ups_01.svs", subtype="ups", size=(1024, 768), mpp=0.5, seed=4).path


TILE_OPTIONS = ("--target-mpp", "1.0", "--tile-size", "48", "--min-tissue", "0.3")


def test_single_slide_file_is_a_one_slide_manifest(small_slide: Path, tmp_path: Path) -> None:
    result = _invoke("tile", str(small_slide), "--out", str(tmp_path / "work"), *TILE_OPTIONS)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "work" / "coords").glob("*.h5")] == ["ups_01.h5"]
    needs_labels = _invoke("train", str(small_slide), "--out", str(tmp_path / "work"))
    assert needs_labels.exit_code == 2 and "not a single slide" in needs_labels.output


def test_other_files_are_not_parsed_as_a_slide_list_silently(tmp_path: Path) -> None:
    image = tmp_path / "overview.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = _invoke("tile", str(image), "--out", str(tmp_path / "work"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if "cannot be read as a slide manifest CSV" in line]
    assert "Fix:" in line and "one slide file" in line


def test_any_failed_slide_makes_the_exit_status_1(small_slide: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    pd.DataFrame([{"slide_id": "good", "path": str(small_slide), "label": "ups", "patient_id": "p1"},
                  {"slide_id": "bad", "path": str(broken), "label": "ups", "patient_id": "p2"}]).to_csv(
        tmp_path / "slides.csv", index=False)
    result = _invoke("tile", str(tmp_path / "slides.csv"), "--out", str(tmp_path / "work"), *TILE_OPTIONS)
    assert result.exit_code == 1, result.output
    assert "1 slide(s) done" in result.output and "1 failed" in result.output
    assert (tmp_path / "work" / "coords" / "good.h5").is_file()  # the good slide was finished
    pooled = _invoke("pretrain", str(tmp_path / "slides.csv"), "--out", str(tmp_path / "work"), "--input-size", "48",
                     "--epochs", "1", "--tiles-per-slide", "4", "--batch-size", "4")
    assert pooled.exit_code == 1, pooled.output  # pretrained on the tiled slide, the other one is listed
    assert (tmp_path / "work" / "ssl" / "encoder.pt").is_file() and "failed bad: no coords file" in pooled.output
