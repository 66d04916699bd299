"""Synthetic census rows in the course's schema (``mlops_lab.data``), seeded and vectorised.

``generate`` makes rows whose marginals and main correlations follow the course's batch (``input_batch.csv``, the
cleaned UCI test split), with a label drawn from a logistic latent score, so a model trained on it learns real signal
and serves the course's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from mlops_lab.data import CATEGORIES, CLASSES, FEATURES, LABEL

# -- generator tables -------------------------------------------------------------------------------------------
# Measured on the course batch (rounded). Rows need not sum to exactly 1: every table is normalised when used.

# Age: share of rows per band of ages [lo, hi].
_AGE_BANDS = np.array(
    [
        (17, 20),
        (21, 25),
        (26, 30),
        (31, 35),
        (36, 40),
        (41, 45),
        (46, 50),
        (51, 55),
        (56, 60),
        (61, 65),
        (66, 70),
        (71, 75),
        (76, 80),
        (81, 90),
    ]
)
_AGE_BAND_SHARE = [0.061, 0.121, 0.129, 0.137, 0.132, 0.121, 0.101, 0.077, 0.055, 0.034, 0.016, 0.010, 0.005, 0.003]

# Coarser age groups for the conditional tables: <=20, 21-25, 26-30, 31-40, 41-50, 51-60, 61-70, 71+.
_AGE_GROUP_STARTS = [21, 26, 31, 41, 51, 61, 71]
_AGE_GROUPS = len(_AGE_GROUP_STARTS) + 1

_P_MALE = 0.673

# marital_status (Married, Never-Married, Separated, Widowed) by sex (Female, Male) and age group.
_MARITAL = np.array(
    [
        [
            [0.016, 0.974, 0.010, 0.000],
            [0.073, 0.852, 0.075, 0.000],
            [0.147, 0.588, 0.261, 0.005],
            [0.218, 0.366, 0.403, 0.014],
            [0.195, 0.179, 0.553, 0.072],
            [0.188, 0.109, 0.509, 0.193],
            [0.132, 0.094, 0.365, 0.409],
            [0.045, 0.045, 0.239, 0.672],
        ],
        [
            [0.016, 0.968, 0.016, 0.000],
            [0.222, 0.740, 0.036, 0.001],
            [0.422, 0.482, 0.094, 0.002],
            [0.684, 0.188, 0.126, 0.002],
            [0.760, 0.085, 0.152, 0.003],
            [0.799, 0.044, 0.134, 0.023],
            [0.853, 0.038, 0.070, 0.038],
            [0.752, 0.044, 0.062, 0.142],
        ],
    ]
)

# relationship (Husband, Not-in-family, Other-relative, Own-child, Unmarried, Wife) by marital status and sex.
# Husband/Wife only for the married, by sex; Own-child is then reweighted by age (_OWN_CHILD_BY_AGE).
_RELATIONSHIP = np.array(
    [
        [[0, 0.004, 0.030, 0.030, 0, 0.936], [0.993, 0.001, 0.004, 0.002, 0, 0]],
        [[0, 0.413, 0.058, 0.399, 0.129, 0], [0, 0.485, 0.060, 0.396, 0.059, 0]],
        [[0, 0.422, 0.043, 0.052, 0.483, 0], [0, 0.685, 0.040, 0.087, 0.188, 0]],
        [[0, 0.539, 0.045, 0.004, 0.412, 0], [0, 0.661, 0.032, 0.065, 0.242, 0]],
    ]
)
_OWN_CHILD_BY_AGE = np.array([4.0, 1.8, 0.7, 0.4, 0.15, 0.1, 0.1, 0.1])

# education (vocabulary order) by age group.
_EDUCATION = np.array(
    [
        [0.006, 0.000, 0.000, 0.343, 0.651, 0.000, 0.000],
        [0.071, 0.169, 0.000, 0.101, 0.647, 0.011, 0.001],
        [0.100, 0.211, 0.004, 0.103, 0.526, 0.045, 0.010],
        [0.090, 0.187, 0.011, 0.100, 0.540, 0.055, 0.018],
        [0.086, 0.188, 0.021, 0.090, 0.489, 0.103, 0.023],
        [0.057, 0.131, 0.022, 0.147, 0.549, 0.074, 0.020],
        [0.056, 0.138, 0.020, 0.218, 0.468, 0.074, 0.026],
        [0.044, 0.089, 0.022, 0.289, 0.483, 0.033, 0.039],
    ]
)

# occupation (vocabulary order) by education, then reweighted by sex (_OCCUPATION_BY_SEX).
_OCCUPATION = np.array(
    [
        [0.162, 0.277, 0.0003, 0.114, 0.139, 0.095, 0.065, 0.148],
        [0.101, 0.089, 0.0003, 0.060, 0.287, 0.185, 0.028, 0.250],
        [0.008, 0.024, 0.0003, 0.040, 0.694, 0.048, 0.008, 0.177],
        [0.042, 0.568, 0.0003, 0.016, 0.014, 0.088, 0.236, 0.035],
        [0.157, 0.403, 0.0003, 0.062, 0.038, 0.119, 0.127, 0.095],
        [0.040, 0.034, 0.0020, 0.025, 0.513, 0.074, 0.022, 0.290],
        [0.019, 0.012, 0.0060, 0.006, 0.862, 0.025, 0.012, 0.056],
    ]
)
_OCCUPATION_BY_SEX = np.array(
    [
        [2.05, 0.31, 0.2, 0.90, 1.14, 1.10, 1.80, 0.89],
        [0.49, 1.33, 1.3, 1.05, 0.93, 0.95, 0.62, 1.06],
    ]
)

# work_class (vocabulary order) by occupation.
_WORK_CLASS = np.array(
    [
        [0.096, 0.077, 0.739, 0.011, 0.008, 0.070, 0.0000],
        [0.011, 0.029, 0.803, 0.021, 0.120, 0.017, 0.0004],
        [1.00, 0.000, 0.000, 0.000, 0.000, 0.000, 0.0000],
        [0.053, 0.200, 0.615, 0.005, 0.016, 0.111, 0.0000],
        [0.037, 0.190, 0.527, 0.043, 0.096, 0.108, 0.0000],
        [0.002, 0.006, 0.807, 0.072, 0.109, 0.004, 0.0000],
        [0.013, 0.061, 0.822, 0.008, 0.057, 0.039, 0.0010],
        [0.043, 0.058, 0.639, 0.116, 0.098, 0.045, 0.0010],
    ]
)

_RACE = [0.010, 0.028, 0.093, 0.009, 0.860]

# native_country (vocabulary order) by race.
_COUNTRY = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.019, 0, 0, 0, 0, 0, 0, 0.981, 0],
        [0.086, 0.168, 0.004, 0.004, 0, 0, 0, 0.007, 0, 0.029, 0.022, 0, 0, 0, 0.294, 0.072, 0, 0.315, 0],
        [0.001, 0, 0, 0.002, 0, 0, 0, 0, 0, 0.001, 0.053, 0.001, 0, 0, 0.002, 0, 0.001, 0.939, 0],
        [0.054, 0, 0.011, 0, 0, 0, 0, 0.022, 0, 0.011, 0.366, 0.011, 0, 0.011, 0, 0, 0.075, 0.441, 0],
        [
            0.009,
            0,
            0.001,
            0.005,
            0.002,
            0.0001,
            0.0004,
            0.001,
            0.002,
            0.001,
            0.030,
            0.003,
            0.002,
            0.002,
            0.001,
            0,
            0.008,
            0.933,
            0.001,
        ],
    ]
)

# hours_per_week: a spike at exactly 40 (share by age group), otherwise normal around a mean shifted by age group,
# sex and occupation.
_HOURS_MEAN, _HOURS_SD = 43.0, 13.0
_HOURS_40_BY_AGE = np.array([0.20, 0.45, 0.52, 0.52, 0.50, 0.50, 0.40, 0.25])
_HOURS_SHIFT_BY_AGE = np.array([-16.0, -5.0, 0.0, 1.0, 1.0, 0.0, -6.0, -14.0])
_HOURS_SHIFT_BY_SEX = np.array([-4.0, 2.5])
_HOURS_SHIFT_BY_OCCUPATION = np.array([-3.0, 1.0, 2.0, 0.0, 1.5, 0.0, -7.0, 5.0])

# capital_gain: a minority of rows have one; its odds grow with education and age. Raw UCI gains cluster on a few
# amounts (15024, 7688, 7298 and the 99999 cap cover a third of them); the rest spread log-normally.
_GAIN_RATE = 0.068
_GAIN_BY_EDUCATION = np.array([1.2, 1.5, 3.2, 0.7, 0.95, 1.9, 3.6])
_GAIN_BY_AGE = np.array([0.25, 0.45, 0.65, 1.0, 1.4, 1.25, 1.8, 2.0])
_GAIN_AMOUNTS = np.array([15024, 7688, 7298, 99999, 3103, 5013, 4386, 2174, 5178, 3325, 27828, 8614, 4650, 10520])
_GAIN_AMOUNT_SHARE = np.array(
    [0.135, 0.096, 0.092, 0.062, 0.041, 0.037, 0.026, 0.025, 0.025, 0.023, 0.020, 0.018, 0.016, 0.016]
)
_GAIN_SPREAD = (np.log(5000.0), 0.8, 114, 41310)  # log-median, log-sd, min, max of the non-clustered amounts

# capital_loss: only for rows without a gain (as in the raw data); clustered around 1900.
_LOSS_RATE = 0.051
_LOSS_AMOUNTS = np.array([1902, 1977, 1887])
_LOSS_AMOUNT_SHARE = np.array([0.14, 0.11, 0.11])
_LOSS_SPREAD = (1880.0, 350.0, 155, 3770)  # mean, sd, min, max of the rest

# The label's latent log-odds; the intercept gives ~24% ">50K". A logistic draw from these log-odds is the noise.
_LOGIT_INTERCEPT = -2.95
_LOGIT_EDUCATION = np.array([0.5, 1.3, 2.3, -1.2, 0.0, 1.7, 2.4])
_LOGIT_OCCUPATION = np.array([-0.2, -0.4, 0.0, 0.2, 0.6, 0.2, -1.2, 0.9])
_LOGIT_MARITAL = np.array([2.0, -0.6, 0.0, 0.0])
_LOGIT_MALE = 0.3
_LOGIT_WORK_CLASS = np.array([0.4, 0.0, 0.0, 0.6, 0.0, 0.0, -3.0])
_LOGIT_AGE_PEAK, _LOGIT_AGE_CURVE = 50, -0.0018  # quadratic in age, peaking at 50
_LOGIT_PER_HOUR = 0.035  # per hour above 40
_LOGIT_BIG_GAIN, _LOGIT_SMALL_GAIN, _BIG_GAIN = 4.0, 0.3, 7000
_LOGIT_LOSS_NEAR_1900, _LOGIT_OTHER_LOSS, _LOSS_NEAR_1900 = 1.2, -0.2, (1800, 2000)


def generate(n_rows: int, seed: int = 42, with_label: bool = True) -> pd.DataFrame:
    """``n_rows`` synthetic rows in the course schema (``FEATURES`` order, plus ``income`` when ``with_label``).

    Deterministic for a given ``(n_rows, seed)``. Fully vectorised: a million rows take a few seconds.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, not {n_rows}")
    rng = np.random.default_rng(seed)

    sex = (rng.random(n_rows) < _P_MALE).astype(np.intp)
    band = _draw(rng, _AGE_BAND_SHARE, n_rows)
    low, high = _AGE_BANDS[band, 0], _AGE_BANDS[band, 1]
    age = rng.integers(low, high + 1)
    age_group = np.searchsorted(_AGE_GROUP_STARTS, age, side="right")

    # Conditional draws: each table is flattened so that one integer indexes the conditioning combination.
    marital = _draw_by_group(rng, _MARITAL.reshape(-1, 4), sex * _AGE_GROUPS + age_group)
    relationship_table = np.repeat(_RELATIONSHIP[:, :, None, :], _AGE_GROUPS, axis=2)
    relationship_table[..., 3] *= _OWN_CHILD_BY_AGE
    relationship = _draw_by_group(rng, relationship_table.reshape(-1, 6), (marital * 2 + sex) * _AGE_GROUPS + age_group)
    education = _draw_by_group(rng, _EDUCATION, age_group)
    occupation_table = _OCCUPATION[:, None, :] * _OCCUPATION_BY_SEX[None, :, :]
    occupation = _draw_by_group(rng, occupation_table.reshape(-1, 8), education * 2 + sex)
    work_class = _draw_by_group(rng, _WORK_CLASS, occupation)
    race = _draw(rng, _RACE, n_rows)
    country = _draw_by_group(rng, _COUNTRY, race)

    hours_mean = (
        _HOURS_MEAN + _HOURS_SHIFT_BY_AGE[age_group] + _HOURS_SHIFT_BY_SEX[sex] + _HOURS_SHIFT_BY_OCCUPATION[occupation]
    )
    hours = np.where(rng.random(n_rows) < _HOURS_40_BY_AGE[age_group], 40.0, rng.normal(hours_mean, _HOURS_SD))
    hours = np.clip(np.rint(hours), 1, 99).astype(np.int64)

    has_gain = rng.random(n_rows) < _GAIN_RATE * _GAIN_BY_EDUCATION[education] * _GAIN_BY_AGE[age_group]
    gain = np.where(has_gain, _amounts(rng, n_rows, _GAIN_AMOUNTS, _GAIN_AMOUNT_SHARE, _lognormal_spread), 0)
    has_loss = ~has_gain & (rng.random(n_rows) < _LOSS_RATE * np.sqrt(_GAIN_BY_AGE[age_group]))
    loss = np.where(has_loss, _amounts(rng, n_rows, _LOSS_AMOUNTS, _LOSS_AMOUNT_SHARE, _normal_spread), 0)

    codes = {
        "work_class": work_class,
        "education": education,
        "marital_status": marital,
        "occupation": occupation,
        "relationship": relationship,
        "race": race,
        "sex": sex,
        "native_country": country,
    }
    columns: dict[str, np.ndarray] = {
        "age": age.astype(np.int64),
        "capital_gain": gain.astype(np.int64),
        "capital_loss": loss.astype(np.int64),
        "hours_per_week": hours,
    }
    columns |= {name: np.asarray(CATEGORIES[name], dtype=object)[values] for name, values in codes.items()}
    frame = pd.DataFrame({name: columns[name] for name in FEATURES})

    if with_label:
        logit = (
            _LOGIT_INTERCEPT
            + _LOGIT_EDUCATION[education]
            + _LOGIT_OCCUPATION[occupation]
            + _LOGIT_MARITAL[marital]
            + _LOGIT_MALE * sex
            + _LOGIT_WORK_CLASS[work_class]
            + _LOGIT_AGE_CURVE * (age - _LOGIT_AGE_PEAK) ** 2
            + _LOGIT_PER_HOUR * (hours - 40)
            + np.where(gain >= _BIG_GAIN, _LOGIT_BIG_GAIN, np.where(gain > 0, _LOGIT_SMALL_GAIN, 0.0))
            + np.where(
                (loss >= _LOSS_NEAR_1900[0]) & (loss <= _LOSS_NEAR_1900[1]),
                _LOGIT_LOSS_NEAR_1900,
                np.where(loss > 0, _LOGIT_OTHER_LOSS, 0.0),
            )
        )
        positive = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))
        frame[LABEL] = np.where(positive, CLASSES[1], CLASSES[0])
    return frame


def _draw(rng: np.random.Generator, weights: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with the given (not necessarily normalised) weights."""
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum())


def _draw_by_group(rng: np.random.Generator, table: np.ndarray, group: np.ndarray) -> np.ndarray:
    """One index per row, drawn from ``table[group[row]]``.

    Loops over the (few) groups present, in sorted order, rather than building an (n_rows, k) probability matrix,
    which would cost n_rows * k floats.
    """
    out = np.zeros(len(group), dtype=np.intp)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        out[rows] = _draw(rng, table[g], len(rows))
    return out


def _amounts(
    rng: np.random.Generator,
    size: int,
    clustered: np.ndarray,
    shares: np.ndarray,
    spread: Callable[[np.random.Generator, int], np.ndarray],
) -> np.ndarray:
    """Amounts that hit one of ``clustered`` with the given ``shares``, else come from ``spread(rng, size)``."""
    pick = _draw(rng, [*shares, 1.0 - shares.sum()], size)
    other = spread(rng, size)
    return np.where(pick < len(clustered), clustered[np.minimum(pick, len(clustered) - 1)], other)


def _lognormal_spread(rng: np.random.Generator, size: int) -> np.ndarray:
    log_median, log_sd, low, high = _GAIN_SPREAD
    return np.clip(np.rint(rng.lognormal(log_median, log_sd, size)), low, high)


def _normal_spread(rng: np.random.Generator, size: int) -> np.ndarray:
    mean, sd, low, high = _LOSS_SPREAD
    return np.clip(np.rint(rng.normal(mean, sd, size)), low, high)
