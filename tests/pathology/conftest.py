"""Session-scoped synthetic slides shared by the pathology I/O tests (written once per test worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarcomakit.pathology.wsi.synthetic import SyntheticSlideInfo, write_synthetic_slide


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def svs_slide(slide_dir: Path) -> SyntheticSlideInfo:
    """Aperio SVS, JPEG tiles, 0.25 µm/px (40x), 2048 x 1536 px."""
    return write_synthetic_slide(slide_dir / "ups.svs", subtype="ups", size=(2048, 1536), mpp=0.25,
                                 seed=1, layout="svs", compression="jpeg")


@pytest.fixture(scope="session")
def tiff_slide(slide_dir: Path) -> SyntheticSlideInfo:
    """Generic pyramidal TIFF, lossless tiles, 0.5 µm/px (20x), 3072 x 2048 px."""
    return write_synthetic_slide(slide_dir / "lms.tif", subtype="leiomyosarcoma", size=(3072, 2048), mpp=0.5,
                                 seed=2, layout="tiff", compression="zlib")


@pytest.fixture(scope="session")
def slide_without_mpp(slide_dir: Path) -> SyntheticSlideInfo:
    """Generic pyramidal TIFF without resolution tags."""
    return write_synthetic_slide(slide_dir / "nompp.tif", subtype="liposarcoma", size=(512, 512), mpp=0.5,
                                 seed=3, layout="tiff", compression="zlib", write_resolution=False)


@pytest.fixture(scope="session", params=["svs", "tiff"])
def any_slide(request: pytest.FixtureRequest, svs_slide: SyntheticSlideInfo,
              tiff_slide: SyntheticSlideInfo) -> SyntheticSlideInfo:
    return svs_slide if request.param == "svs" else tiff_slide
