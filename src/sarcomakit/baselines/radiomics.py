"""Classic radiomics baseline: hand-crafted tumour features, logistic regression for grade, penalised Cox for risk.

Features come from pyradiomics (an optional extra, imported only when features are extracted):

- classes: ``shape`` (3D, from the mask only), ``firstorder``, ``glcm``, ``glrlm``, ``glszm`` on the
  original image (no filters);
- grey levels discretised with a *fixed bin width* (IBSI's recommendation for quantitative images):
  25 HU for CT, 0.25 SUV for PET; other channels (MR, arbitrary units) are first z-scored over the
  whole image by pyradiomics (``normalize``, ``normalizeScale=100``), then binned with width 5, i.e.
  0.05 standard deviations;
- the mask is the case's label map, every non-zero label by default (tumour with necrosis and oedema
  labels if present) or one label value; pyradiomics resamples it onto the image grid if the two
  differ slightly (``correctMask``); optional isotropic resampling (``resampled_spacing``) makes
  texture features comparable across cohorts with varied voxel spacing.

Feature names are ``<channel>_<class>_<feature>`` (e.g. ``T1_glcm_Contrast``); shape features are
channel-independent and named ``shape_<feature>``.

Install pyradiomics (no wheel for Python 3.11; its isolated build fails)::

    pip install numpy setuptools wheel
    pip install --no-build-isolation pyradiomics==3.0.1
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json
from sarcomakit.core.io.image import read_image
from sarcomakit.data.manifest import GRADES, Case, Manifest
from sarcomakit.evaluation.grade import encode_grades
from sarcomakit.losses.cox import cox_neg_partial_log_likelihood

FEATURE_CLASSES: tuple[str, ...] = ("shape", "firstorder", "glcm", "glrlm", "glszm")
INSTALL_HINT = "pip install numpy setuptools wheel && pip install --no-build-isolation pyradiomics==3.0.1"
CT_BIN_WIDTH_HU = 25.0
PET_BIN_WIDTH_SUV = 0.25
MR_BIN_WIDTH = 5.0
MR_NORMALIZE_SCALE = 100.0


# ---------------------------------------------------------------------- extraction
def radiomics_settings(channel_name: str, bin_width: float | None = None,
                       resampled_spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """pyradiomics settings for a channel (see the module docstring for the choices).

    Args:
        channel_name: the channel's name; ``CT*`` and ``PET*`` (any case) keep their physical units.
        bin_width: override the default bin width.
        resampled_spacing: resample image and mask to this (x, y, z) spacing in mm before extraction.
    """
    name = channel_name.upper()
    settings: dict[str, Any] = {"correctMask": True, "geometryTolerance": 1e-3, "force2D": False,
                                "additionalInfo": False}
    if name.startswith("CT"):
        settings.update(binWidth=CT_BIN_WIDTH_HU, normalize=False)
    elif name.startswith("PET"):
        settings.update(binWidth=PET_BIN_WIDTH_SUV, normalize=False)
    else:
        settings.update(binWidth=MR_BIN_WIDTH, normalize=True, normalizeScale=MR_NORMALIZE_SCALE)
    if bin_width is not None:
        if not bin_width > 0:
            raise ValueError(f"bin width must be positive, got {bin_width}")
        settings["binWidth"] = float(bin_width)
    if resampled_spacing is not None:
        settings.update(resampledPixelSpacing=[float(s) for s in resampled_spacing], interpolator="sitkBSpline")
    return settings


def extract_radiomics_features(image: sitk.Image, mask: sitk.Image, channel_name: str, *,
                               label: int | None = None, include_shape: bool = True,
                               bin_width: float | None = None,
                               resampled_spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Radiomics features of one channel inside a tumour mask.

    Args:
        image: the channel's image.
        mask: label map on the same grid (or close to it).
        channel_name: prefixes the feature names and picks the default settings.
        label: the label value to use; default every non-zero label.
        include_shape: add the (channel-independent) shape features.
        bin_width, resampled_spacing: see :func:`radiomics_settings`.

    Returns:
        ``{feature name: value}`` (floats; NaN where pyradiomics gives no number).

    Raises:
        UserInputError: pyradiomics is not installed.
        ValueError: the mask selects no voxel.
    """
    featureextractor = _pyradiomics_extractor_module()
    roi = sitk.Cast(mask != 0 if label is None else mask == label, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(roi)):
        raise ValueError(f"the tumour mask is empty (label {label if label is not None else 'any non-zero'})")
    extractor = featureextractor.RadiomicsFeatureExtractor(**radiomics_settings(channel_name, bin_width,
                                                                                 resampled_spacing))
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.disableAllFeatures()
    for feature_class in FEATURE_CLASSES:
        if feature_class != "shape" or include_shape:
            extractor.enableFeatureClassByName(feature_class)
    raw = extractor.execute(sitk.Cast(image, sitk.sitkFloat32), roi, label=1)
    features: dict[str, float] = {}
    for key, value in raw.items():
        if not key.startswith("original_"):
            continue  # diagnostics (versions, settings, mask statistics)
        _, feature_class, feature = key.split("_", 2)
        name = f"shape_{feature}" if feature_class == "shape" else f"{channel_name}_{feature_class}_{feature}"
        features[name] = float(value)
    return features


def extract_cohort_features(manifest: Manifest, channels: Sequence[str] | None, out_csv: str | Path, *,
                            label: int | None = None, bin_widths: Mapping[str, float] | None = None,
                            resampled_spacing: Sequence[float] | None = None,
                            show_progress: bool = True) -> tuple[pd.DataFrame, CohortResult[dict[str, float]]]:
    """Radiomics features of every case with a label mask, cached and resumable.

    Each case's features are written to ``<out_csv stem>_cases/<case_id>.json`` as soon as they are
    computed (with the settings that produced them); a rerun skips cases whose cache matches the
    current settings, so an interrupted extraction continues where it stopped. The table of all cases
    is then written atomically to ``out_csv`` (one row per case, ``case_id`` first).

    Args:
        manifest: the cohort; cases need a label mask and the chosen channels.
        channels: channels to use (default all declared channels).
        out_csv: the feature table to write.
        label, resampled_spacing: see :func:`extract_radiomics_features`.
        bin_widths: per-channel bin width overrides.

    Returns:
        ``(table indexed by case_id, cohort result with failures)``; failed cases are absent from the table.
    """
    _pyradiomics_extractor_module()  # fail once, clearly, before looping over the cohort
    chosen = list(channels or manifest.channels)
    unknown = [c for c in chosen if c not in manifest.channels]
    if unknown:
        raise UserInputError(f"channel(s) {unknown} are not declared by the manifest {manifest.channels}.",
                             path=manifest.source, fix="choose among the manifest's channels.")
    out_csv = Path(out_csv)
    cache_dir = out_csv.with_name(out_csv.stem + "_cases")
    settings = {"channels": chosen, "label": label, "bin_widths": dict(bin_widths or {}),
                "resampled_spacing": list(resampled_spacing) if resampled_spacing is not None else None,
                "radiomics": {c: radiomics_settings(c, (bin_widths or {}).get(c), resampled_spacing)
                              for c in chosen}}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(case: Case) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", case.case_id)
        if safe != case.case_id:  # keep ids that differ only in odd characters apart
            safe += "-" + hashlib.sha256(case.case_id.encode()).hexdigest()[:8]
        return cache_dir / f"{safe}.json"

    def is_done(case: Case) -> bool:
        path = cache_path(case)
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("settings") == fingerprint
        except (OSError, json.JSONDecodeError):
            return False

    def extract(case: Case) -> dict[str, float]:
        if case.label is None:
            raise UserInputError("case has no label mask; radiomics needs the tumour contour.",
                                 fix="add the case's label path to the manifest.")
        missing = [c for c in chosen if c not in case.images]
        if missing:
            raise UserInputError(f"case has no image for channel(s) {missing}.", fix="complete the manifest row.")
        mask = read_image(case.label)
        features: dict[str, float] = {}
        for i, channel in enumerate(chosen):
            features.update(extract_radiomics_features(
                read_image(case.images[channel]), mask, channel, label=label, include_shape=i == 0,
                bin_width=(bin_widths or {}).get(channel), resampled_spacing=resampled_spacing))
        write_json(cache_path(case), {"case_id": case.case_id, "settings": fingerprint, "features": features})
        return features

    outcome = run_per_case(manifest.cases, extract, name=lambda c: c.case_id, description="radiomics",
                           is_done=is_done, show_progress=show_progress)
    rows = {}
    for case in manifest.cases:
        if case.case_id in outcome.failures or not cache_path(case).is_file():
            continue
        rows[case.case_id] = json.loads(cache_path(case).read_text(encoding="utf-8"))["features"]
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "case_id"
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp)
    return table, outcome


def load_feature_table(path: str | Path) -> pd.DataFrame:
    """Read a feature table written by :func:`extract_cohort_features` (indexed by case_id)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError("feature table not found.", path=p, fix="extract the features first.")
    return pd.read_csv(p, index_col="case_id")


def _pyradiomics_extractor_module() -> Any:
    try:
        from radiomics import featureextractor
    except ImportError as exc:
        raise UserInputError(f"pyradiomics is not installed ({exc}); radiomics features need it.",
                             fix=INSTALL_HINT) from exc
    logging.getLogger("radiomics").setLevel(logging.ERROR)  # it logs every setting and symmetry note
    return featureextractor


# ---------------------------------------------------------------------- models
class PenalizedCoxRegression:
    r"""Linear Cox model with a ridge penalty on standardised features (scikit-learn style).

    Minimises :math:`-\ell(Z\beta) + \tfrac{n}{2} \lambda \lVert\beta\rVert^2` over :math:`\beta`, where
    :math:`Z` are the features standardised with the training mean and (ddof = 1) standard deviation
    and :math:`\ell` the partial log-likelihood with Efron's ties, which is lifelines' ``CoxPHFitter
    (penalizer=λ)`` objective. Written with scipy's L-BFGS and torch's gradient rather than depending
    on lifelines at run time. Constant features get a zero coefficient.

    Convergence is judged by first-order optimality, not by the optimiser's status: L-BFGS-B runs to
    tight tolerances and, near the optimum, often stops with "ABNORMAL" (its line search cannot lower an
    objective of a few hundred by less than float64 rounding) at a point whose gradient is ~1e-7; the
    fit counts as converged when the largest gradient component, per case, is at most ``tol``. The
    gradient of the summed objective grows with the number of cases, so a per-case tolerance means the
    same accuracy for a cohort of 50 or 5,000 (the distance to the optimum is about the gradient over the
    Hessian, which also grows with the cases). A fit that does not converge warns
    (``sklearn.exceptions.ConvergenceWarning``), e.g. unpenalised data whose risk order is perfectly
    separable, where the coefficients diverge.

    Args:
        penalizer: :math:`\lambda \ge 0`.
        ties: ``"efron"`` or ``"breslow"``.
        tol: largest gradient component per case at which the fit counts as converged.
        max_iter: L-BFGS iteration limit.

    Attributes (after ``fit``):
        coef_, coef_standardised_: coefficients per unit of the features and per standard deviation.
        objective_: the penalised negative partial log-likelihood at the solution.
        gradient_max_: the largest absolute gradient component there (not divided by the cases).
        converged_: ``gradient_max_ <= tol * n_cases``.
    """

    def __init__(self, penalizer: float = 0.1, ties: str = "efron", tol: float = 1e-6, max_iter: int = 1000) -> None:
        self.penalizer = penalizer
        self.ties = ties
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, features: np.ndarray, time: Sequence[float], event: Sequence[float]) -> PenalizedCoxRegression:
        """Fit on features (N, P), times and events (1 died, 0 censored)."""
        x = np.asarray(features, dtype=float)
        t = np.asarray(time, dtype=float)
        e = np.asarray(event, dtype=float)
        if x.ndim != 2 or x.shape[0] != t.size or t.size != e.size:
            raise ValueError("features must be (N, P) with one time and one event per row")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or Inf; impute them first")
        if e.sum() == 0:
            raise ValueError("cannot fit a Cox model without any event")
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.ones(x.shape[1])
        self.scale_ = np.where(scale > 0, scale, 1.0)
        z = torch.from_numpy((x - self.mean_) / self.scale_)
        t_torch, e_torch = torch.from_numpy(t), torch.from_numpy(e)
        n = x.shape[0]

        def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
            b = torch.from_numpy(beta).requires_grad_(True)
            loss = cox_neg_partial_log_likelihood(z @ b, t_torch, e_torch, ties=self.ties, reduction="sum")
            loss = loss + 0.5 * n * self.penalizer * (b * b).sum()
            (gradient,) = torch.autograd.grad(loss, b)
            return loss.item(), gradient.numpy()

        # tight tolerances: the optimiser goes as far as float64 rounding allows; convergence is judged below
        # by the gradient, whatever status the optimiser reports
        result = minimize(objective, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
                          options={"maxiter": self.max_iter, "gtol": 1e-9, "ftol": 1e-14})
        self.gradient_max_ = float(np.abs(result.jac).max(initial=0.0))
        self.converged_ = self.gradient_max_ <= self.tol * n
        if not self.converged_:
            warnings.warn(f"the Cox model did not converge in {result.nit} iterations (largest gradient component "
                          f"{self.gradient_max_:.2g}, tolerance {self.tol * n:.2g}; optimiser: {result.message}); "
                          "a larger penalizer helps when features separate the risk order or outnumber the events",
                          ConvergenceWarning, stacklevel=2)
        self.coef_standardised_ = result.x
        self.coef_ = result.x / self.scale_  # per unit of the original features
        self.objective_ = float(result.fun)  # penalised negative partial log-likelihood at the optimum
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Log-risk ``(x - mean) . coef`` of each row (higher = worse)."""
        x = np.asarray(features, dtype=float)
        return ((x - self.mean_) / self.scale_) @ self.coef_standardised_


class RadiomicsBaseline:
    """The radiomics reference model: grade by logistic regression, risk by a penalised Cox model.

    Missing feature values are filled with the training median; features constant in training are
    dropped. Grade: standardised features, multinomial ``LogisticRegression(C, class_weight="balanced")``
    on the cases with a known grade. Survival: :class:`PenalizedCoxRegression` on the cases with a known
    time and event. Either part is skipped (and its predictions are unavailable) when its labels are
    missing, or, for survival, when no event was observed.

    Args:
        C: inverse L2 strength of the logistic regression.
        penalizer: ridge penalty of the Cox model.
        class_weight: passed to ``LogisticRegression`` (``"balanced"`` or None).

    Example:
        >>> model = RadiomicsBaseline().fit(features, grade=grades, time=times, event=events)  # doctest: +SKIP
        >>> proba, risk = model.predict_proba(features_test), model.predict_risk(features_test)  # doctest: +SKIP
    """

    def __init__(self, C: float = 0.1, penalizer: float = 0.1, class_weight: str | None = "balanced",
                 max_iter: int = 2000) -> None:
        self.C = C
        self.penalizer = penalizer
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, features: pd.DataFrame | np.ndarray, grade: Sequence[str | int | None] | None = None,
            time: Sequence[float] | None = None, event: Sequence[float] | None = None) -> RadiomicsBaseline:
        """Fit the grade and/or survival parts (labels may be None/-1/NaN for unknown)."""
        x = self._prepare_fit(features)
        self.grade_model_ = None
        self.survival_model_ = None
        if grade is not None:
            y = encode_grades(grade)
            known = y >= 0
            if len(np.unique(y[known])) >= 2:
                self.grade_model_ = make_pipeline(
                    StandardScaler(), LogisticRegression(C=self.C, class_weight=self.class_weight,
                                                         max_iter=self.max_iter))
                self.grade_model_.fit(x[known], y[known])
        if time is not None and event is not None:
            t = np.asarray(time, dtype=float)
            e = np.asarray(event, dtype=float)
            known = np.isfinite(t) & (t >= 0) & np.isin(e, (0.0, 1.0))
            if e[known].sum() > 0:
                self.survival_model_ = PenalizedCoxRegression(self.penalizer).fit(x[known], t[known], e[known])
        return self

    def predict_proba(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Grade probabilities (N, 3) in the order of :data:`GRADES` (0 for a class absent in training)."""
        if self.grade_model_ is None:
            raise RuntimeError("the grade model was not fitted (fewer than two known grades in training)")
        x = self._prepare(features)
        proba = np.zeros((x.shape[0], len(GRADES)))
        proba[:, self.grade_model_.classes_] = self.grade_model_.predict_proba(x)
        return proba

    def predict_risk(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Cox log-risk of each case (higher = worse)."""
        if self.survival_model_ is None:
            raise RuntimeError("the survival model was not fitted (no case with a known time and an event)")
        return self.survival_model_.predict(self._prepare(features))

    def _prepare_fit(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        x = _as_matrix(features)
        self.columns_ = list(features.columns) if isinstance(features, pd.DataFrame) else None
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0)
        self.fill_ = np.where(np.isfinite(median), median, 0.0)
        filled = self._fill(x)
        self.kept_ = np.ptp(filled, axis=0) > 0
        if not self.kept_.any():
            raise ValueError("every feature is constant in training")
        return filled[:, self.kept_]

    def _prepare(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.columns_ is not None and isinstance(features, pd.DataFrame):
            missing = [c for c in self.columns_ if c not in features.columns]
            if missing:
                raise ValueError(f"features lack {len(missing)} training column(s), e.g. {missing[:3]}")
            features = features[self.columns_]
        return self._fill(_as_matrix(features))[:, self.kept_]

    def _fill(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.fill_.size:
            raise ValueError(f"expected {self.fill_.size} features, got {x.shape[1]}")
        return np.where(np.isfinite(x), x, self.fill_[None, :])


def _as_matrix(features: pd.DataFrame | np.ndarray) -> np.ndarray:
    x = np.asarray(features.to_numpy() if isinstance(features, pd.DataFrame) else features, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D table, got shape {x.shape}")
    return x
