"""Clinical truth of a synthetic patient: histological grade and survival from a proportional-hazards model.

Survival follows a Weibull proportional-hazards model,

.. math:: h(t \\mid x) = h_0(t)\\, e^{\\eta}, \\quad h_0(t) = \\frac{k}{\\lambda}\\Big(\\frac{t}{\\lambda}\\Big)^{k-1},
          \\quad \\eta = \\beta_{\\mathrm{grade}} + \\beta_V \\log(V / V_0),

sampled by inversion, :math:`T = \\lambda\\,(E e^{-\\eta})^{1/k}` with :math:`E \\sim \\mathrm{Exp}(1)`.
Follow-up ends at the earlier of loss to follow-up (exponential) and the administrative end of the
study (patients enrolled uniformly over its first years), which censors about half of the patients.
"""

from __future__ import annotations

import numpy as np

GRADES: tuple[str, ...] = ("low", "intermediate", "high")
GRADE_PROBABILITIES: tuple[float, ...] = (0.2, 0.35, 0.45)
LOG_HAZARD_BY_GRADE: dict[str, float] = {"low": 0.0, "intermediate": 0.8, "high": 1.6}
LOG_HAZARD_PER_LOG_VOLUME = 0.5  # beta_V
REFERENCE_VOLUME_ML = 50.0  # V_0
WEIBULL_SHAPE = 1.2  # k
WEIBULL_SCALE_DAYS = 4000.0  # lambda: median survival of a low-grade 50 ml tumour about 8 years
ENROLMENT_YEARS = 5.0
STUDY_YEARS = 8.0
LOSS_TO_FOLLOW_UP_MEAN_YEARS = 15.0


def draw_grade(rng: np.random.Generator) -> str:
    """Histological grade with the probabilities of :data:`GRADE_PROBABILITIES`."""
    return str(rng.choice(GRADES, p=GRADE_PROBABILITIES))


def true_log_hazard(grade: str, volume_ml: float) -> float:
    """The log relative hazard :math:`\\eta` of a patient (0 for a low-grade tumour of 50 ml)."""
    return LOG_HAZARD_BY_GRADE[grade] + LOG_HAZARD_PER_LOG_VOLUME * float(np.log(volume_ml / REFERENCE_VOLUME_ML))


def draw_survival(rng: np.random.Generator, log_hazard: float) -> tuple[float, int]:
    """Observed survival time (days, >= 1) and event indicator (1 death observed, 0 censored)."""
    event_time = WEIBULL_SCALE_DAYS * (rng.exponential() * np.exp(-log_hazard)) ** (1 / WEIBULL_SHAPE)
    administrative = 365.25 * (STUDY_YEARS - rng.uniform(0, ENROLMENT_YEARS))
    lost = 365.25 * rng.exponential(LOSS_TO_FOLLOW_UP_MEAN_YEARS)
    censor_time = min(administrative, lost)
    observed = max(min(event_time, censor_time), 1.0)
    return float(round(observed, 1)), int(event_time <= censor_time)
