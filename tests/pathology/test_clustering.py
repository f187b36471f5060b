"""Phenotype clustering: recovery of known clusters, composition table, maps, density option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from figure_checks import near_colour, read_png
from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.analysis.clustering import (
    cluster_composition,
    embedding_map,
    fit_phenotype_clusters,
    plot_embedding_map,
    sample_embeddings,
)
from sarcomakit.pathology.wsi.h5io import save_features

CENTRES = np.array([[6.0, 0, 0, 0], [0, 6.0, 0, 0], [0, 0, 6.0, 0]])


def _slides(tmp_path: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """Three slides drawing tiles from three known phenotypes in different proportions."""
    rng = np.random.default_rng(0)
    mixes = {"s0": [1.0, 0.0, 0.0], "s1": [0.5, 0.5, 0.0], "s2": [0.2, 0.2, 0.6]}
    files, truth = {}, {}
    for slide_id, mix in mixes.items():
        kinds = rng.choice(3, size=300, p=mix)
        features = CENTRES[kinds] + rng.normal(0, 0.5, (300, 4))
        files[slide_id] = save_features(tmp_path / f"{slide_id}.h5", features, rng.integers(0, 999, (300, 2)))
        truth[slide_id] = kinds
    return files, truth


def test_kmeans_recovers_phenotypes_and_composition(tmp_path: Path) -> None:
    files, truth = _slides(tmp_path)
    sample = sample_embeddings(files, per_slide=100, seed=0)
    assert len(sample.features) == 300 and set(sample.slide_ids) == {"s0", "s1", "s2"}
    clusters = fit_phenotype_clusters(sample.features, "kmeans", n_clusters=3, seed=0)
    table = cluster_composition(clusters, files)
    assert list(table.columns) == ["slide_id", "n_tiles", "cluster_0", "cluster_1", "cluster_2"]
    np.testing.assert_allclose(table[["cluster_0", "cluster_1", "cluster_2"]].sum(axis=1), 1.0)
    all_features = np.concatenate([CENTRES[truth[s]] for s in files])
    assigned = clusters.assign(all_features)
    assert adjusted_rand_score(np.concatenate(list(truth.values())), assigned) == 1.0
    # Slide s0 is pure phenotype 0: one cluster holds all its tiles.
    assert table.set_index("slide_id").loc["s0", ["cluster_0", "cluster_1", "cluster_2"]].max() == 1.0


def test_density_clustering_and_maps(tmp_path: Path) -> None:
    files, _ = _slides(tmp_path)
    sample = sample_embeddings(files, per_slide=150, seed=1)
    clusters = fit_phenotype_clusters(sample.features, "hdbscan", min_cluster_size=15, seed=0)
    assert clusters.n_clusters == 3
    tsne = embedding_map(clusters, sample.features[::5], "tsne", seed=0)  # a subset keeps t-SNE quick
    assert tsne.shape == (len(sample.features[::5]), 2) and np.isfinite(tsne).all()
    xy = embedding_map(clusters, sample.features, "pca")
    assert xy.shape == (len(sample.features), 2)
    pixels = read_png(plot_embedding_map(xy, clusters.sample_labels, ["a"] * len(xy), tmp_path / "map.png"))
    by_cluster, by_label = pixels[:, : pixels.shape[1] // 2], pixels[:, pixels.shape[1] // 2:]
    # tab20 colours 0, 1, 2 at alpha 0.7 over white: one per cluster on the left, the one label on the right
    colours = ("#62a0cb", "#c6d8ef", "#ffa556")
    assert all(near_colour(by_cluster, colour, 25).sum() > 20 for colour in colours)
    assert near_colour(by_label, colours[0], 25).sum() > 20
    assert not near_colour(by_label, colours[2], 25).any()


def test_clustering_input_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown clustering method"):
        fit_phenotype_clusters(np.random.default_rng(0).normal(size=(10, 3)), "spectral")
    empty = save_features(tmp_path / "e.h5", np.zeros((0, 4)), np.zeros((0, 2)))
    with pytest.raises(UserInputError, match="no slide has features"):
        sample_embeddings({"e": empty})
