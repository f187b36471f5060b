"""Phenotype clustering of patch embeddings across a cohort.

A random subsample of tiles per slide is standardised and reduced by PCA; clusters are found by k-means
(``MiniBatchKMeans``) or by density (``HDBSCAN``, which leaves outliers as noise, label -1). Every tile of
every slide is then assigned to a cluster (k-means: nearest centre; density: nearest centre of the found
clusters, so that composition tables cover all tiles), giving a per-slide composition table (fraction of
tiles per cluster) usable as slide features downstream. A 2D map (PCA, optionally t-SNE) shows the sample
coloured by cluster and by slide label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import HDBSCAN, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path


@dataclass
class EmbeddingSample:
    """Tiles sampled from a cohort: features (M, D), slide id, coords (M, 2) and index in their slide."""

    features: np.ndarray
    slide_ids: np.ndarray
    coords: np.ndarray
    tile_index: np.ndarray


def sample_embeddings(feature_files: Mapping[str, str | Path], per_slide: int = 200,
                      seed: int = 0) -> EmbeddingSample:
    """A random subsample of at most ``per_slide`` tiles from each slide's feature HDF5."""
    from sarcomakit.pathology.wsi.h5io import load_features

    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for slide_id, path in feature_files.items():
        features, coords, _ = load_features(path)
        if len(features) == 0:
            continue
        chosen = np.sort(rng.choice(len(features), size=min(per_slide, len(features)), replace=False))
        parts.append((np.asarray(features)[chosen], np.full(len(chosen), slide_id, dtype=object),
                      np.asarray(coords)[chosen], chosen))
    if not parts:
        raise UserInputError("no slide has features to cluster.", fix="run `sarcomakit wsi embed` first.")
    return EmbeddingSample(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


@dataclass
class PhenotypeClusters:
    """A fitted clustering: scaler and PCA of the features, and the cluster centres in PCA space."""

    method: str
    scaler: StandardScaler
    pca: PCA
    centres: np.ndarray
    sample_labels: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.centres.shape[0])

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Features (M, D) -> PCA coordinates (M, n_components)."""
        return self.pca.transform(self.scaler.transform(np.asarray(features, dtype=np.float64)))

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Cluster of each feature vector: the nearest centre in PCA space."""
        z = self.transform(features)
        distances = ((z[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return distances.argmin(axis=1)


def fit_phenotype_clusters(features: np.ndarray, method: str = "kmeans", n_clusters: int = 8,
                           n_components: int = 32, min_cluster_size: int = 20,
                           seed: int = 0) -> PhenotypeClusters:
    """Cluster patch embeddings.

    Args:
        features: sampled embeddings (M, D).
        method: ``kmeans`` (MiniBatchKMeans with ``n_clusters``) or ``hdbscan`` (density clusters of at least
            ``min_cluster_size`` tiles; noise is labelled -1 in ``sample_labels``).
        n_clusters: number of k-means clusters.
        n_components: PCA components kept before clustering (capped by the data).
        min_cluster_size: HDBSCAN's smallest cluster.
        seed: random seed.

    Returns:
        The :class:`PhenotypeClusters` (``sample_labels`` are the labels of ``features``).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] < 2:
        raise UserInputError(f"clustering needs at least 2 tiles, got {x.shape[0]}.")
    scaler = StandardScaler().fit(x)
    pca = PCA(n_components=min(n_components, x.shape[0], x.shape[1]), random_state=seed).fit(scaler.transform(x))
    z = pca.transform(scaler.transform(x))
    if method == "kmeans":
        k = min(n_clusters, x.shape[0])
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=1024).fit(z)
        labels = model.labels_
        centres = model.cluster_centers_
    elif method == "hdbscan":
        labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(z)
        found = sorted(set(labels) - {-1})
        if not found:
            raise UserInputError("HDBSCAN found no cluster (every tile is noise).",
                                 fix="lower --min-cluster-size or use --method kmeans.")
        centres = np.stack([z[labels == c].mean(axis=0) for c in found])
        remap = {c: i for i, c in enumerate(found)}
        labels = np.array([remap.get(int(c), -1) for c in labels])
    else:
        raise UserInputError(f"unknown clustering method {method!r}.", fix="use kmeans or hdbscan.")
    return PhenotypeClusters(method, scaler, pca, centres, np.asarray(labels))


def cluster_composition(clusters: PhenotypeClusters, feature_files: Mapping[str, str | Path]) -> pd.DataFrame:
    """Fraction of each slide's tiles in each cluster (rows: slides; columns: n_tiles, cluster_0, ...)."""
    from sarcomakit.pathology.wsi.h5io import load_features

    rows = []
    for slide_id, path in feature_files.items():
        features, _, _ = load_features(path)
        counts = np.bincount(clusters.assign(features), minlength=clusters.n_clusters) if len(features) else (
            np.zeros(clusters.n_clusters))
        total = max(int(counts.sum()), 1)
        rows.append({"slide_id": slide_id, "n_tiles": int(counts.sum()),
                     **{f"cluster_{c}": counts[c] / total for c in range(clusters.n_clusters)}})
    return pd.DataFrame(rows)


def embedding_map(clusters: PhenotypeClusters, features: np.ndarray, method: str = "pca",
                  seed: int = 0) -> np.ndarray:
    """2D coordinates (M, 2) of embeddings: the first two PCA components, or t-SNE on the PCA space."""
    z = clusters.transform(features)
    if method == "pca":
        if z.shape[1] < 2:
            return np.column_stack([z[:, 0], np.zeros(len(z))])
        return z[:, :2]
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(z) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    raise UserInputError(f"unknown map method {method!r}.", fix="use pca or tsne.")


def plot_embedding_map(xy: np.ndarray, cluster_labels: np.ndarray, slide_labels: Sequence[str | None],
                       out_png: str | Path, title: str = "patch embeddings") -> Path:
    """Two panels of the 2D map: coloured by cluster and by slide label; saved as PNG atomically."""
    figure = Figure(figsize=(11, 5), dpi=100)
    axes = figure.subplots(1, 2)
    palette = matplotlib.colormaps["tab20"]
    for c in sorted(set(cluster_labels.tolist())):
        sel = cluster_labels == c
        axes[0].scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.7, color="lightgrey" if c < 0 else palette(c % 20),
                        label="noise" if c < 0 else f"cluster {c}")
    labels = np.array(["unlabelled" if v is None else str(v) for v in slide_labels], dtype=object)
    for i, name in enumerate(sorted(set(labels.tolist()))):
        sel = labels == name
        axes[1].scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.7, color=palette((2 * i) % 20), label=name)
    for ax, what in zip(axes, ("cluster", "slide label"), strict=True):
        ax.set_title(f"{title}: by {what}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3, loc="best")
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return Path(out_png)


def cluster_example_tiles(sample: EmbeddingSample, clusters: PhenotypeClusters, slide_paths: Mapping[str, Path],
                          size_level0: Mapping[str, float], out_png: str | Path, per_cluster: int = 6,
                          out_px: int = 96, mpp: float | None = None) -> Path:
    """Grid PNG of the sampled tiles nearest each cluster centre (one row per cluster).

    Args:
        sample: the sampled tiles (from :func:`sample_embeddings`).
        clusters: the fitted clusters.
        slide_paths: slide file per slide id.
        size_level0: tile side in level-0 pixels per slide id.
        out_png: output file.
        per_cluster: examples per cluster.
        out_px: side of each example image.
        mpp: microns per pixel for slides without resolution metadata.
    """
    from sarcomakit.pathology.analysis.heatmap import read_tile_images, save_tile_grid
    from sarcomakit.pathology.wsi.reader import open_slide

    z = clusters.transform(sample.features)
    assigned = clusters.assign(sample.features)
    images: list[np.ndarray] = []
    titles: list[str] = []
    blank = np.full((out_px, out_px, 3), 255, dtype=np.uint8)
    for c in range(clusters.n_clusters):
        members = np.flatnonzero(assigned == c)
        order = members[np.argsort(((z[members] - clusters.centres[c]) ** 2).sum(-1))][:per_cluster]
        for j in range(per_cluster):
            if j < len(order):
                i = order[j]
                slide_id = str(sample.slide_ids[i])
                with open_slide(slide_paths[slide_id], mpp=mpp) as reader:
                    images += read_tile_images(reader, sample.coords[i:i + 1], size_level0[slide_id], out_px)
                titles.append(f"cluster {c}: {slide_id}" if j == 0 else slide_id)
            else:
                images.append(blank)
                titles.append(f"cluster {c}" if j == 0 else "")
    return save_tile_grid(images, titles, out_png, n_cols=per_cluster,
                          suptitle="tiles nearest each cluster centre")
