"""The lab's data: the course's cleaned UCI Adult schema and CSV loading (the synthetic rows: ``synthetic``).

The schema is the course's: the raw UCI Adult columns minus ``fnlwgt``/``education-num``, with categories grouped
into the course's cleaned vocabularies (e.g. 16 education levels into 7). ``load_training_csv`` reads the lab's own
CSVs and the raw UCI files (``adult.data``/``adult.test``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

# -- schema -----------------------------------------------------------------------------------------------------

NUMERIC: tuple[str, ...] = ("age", "capital_gain", "capital_loss", "hours_per_week")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "work_class": (
        "Federal-gov",
        "Local-gov",
        "Private",
        "Self-emp-inc",
        "Self-emp-not-inc",
        "State-gov",
        "Without-pay",
    ),
    "education": (
        "Associates",
        "Bachelors",
        "Doctorate",
        "Dropout",
        "High School grad",
        "Masters",
        "Prof-School",
    ),
    "marital_status": ("Married", "Never-Married", "Separated", "Widowed"),
    "occupation": (
        "Admin",
        "Blue-Collar",
        "Military",
        "Other",
        "Professional",
        "Sales",
        "Service",
        "White-Collar",
    ),
    "relationship": ("Husband", "Not-in-family", "Other-relative", "Own-child", "Unmarried", "Wife"),
    "race": ("Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"),
    "sex": ("Female", "Male"),
    "native_country": (
        "British-Commonwealth",
        "China",
        "France",
        "Germany",
        "Greece",
        "Holand-Netherlands",
        "Hungary",
        "Iran",
        "Italy",
        "Japan",
        "Latin-America",
        "Other",
        "Poland",
        "Portugal",
        "SE-Asia",
        "South",
        "South-America",
        "United-States",
        "Yugoslavia",
    ),
}
CATEGORICAL: tuple[str, ...] = tuple(CATEGORIES)

# Column order of the course's CSVs.
FEATURES: tuple[str, ...] = (
    "age",
    "work_class",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
)
LABEL = "income"
CLASSES: tuple[str, ...] = ("<=50K", ">50K")

# -- raw UCI Adult ----------------------------------------------------------------------------------------------

UCI_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
_UCI_RENAME = {
    "workclass": "work_class",
    "marital-status": "marital_status",
    "capital-gain": "capital_gain",
    "capital-loss": "capital_loss",
    "hours-per-week": "hours_per_week",
    "native-country": "native_country",
}

# Raw UCI value -> cleaned vocabulary, for the values that are not already in it. The groups reproduce the course's
# cleaning, checked against the course batch's marginals: Some-college is counted as High School grad (54% of the
# batch, which only HS-grad + Some-college reach) and Married-spouse-absent as Separated (the batch has almost no
# Married + Not-in-family rows, which is where spouse-absent rows sit in the raw data).
_UCI_MAPS: dict[str, dict[str, str]] = {
    "work_class": {"Never-worked": "Without-pay"},
    "education": {
        "HS-grad": "High School grad",
        "Some-college": "High School grad",
        "Assoc-acdm": "Associates",
        "Assoc-voc": "Associates",
        "Prof-school": "Prof-School",
        **dict.fromkeys(("Preschool", "1st-4th", "5th-6th", "7th-8th", "9th", "10th", "11th", "12th"), "Dropout"),
    },
    "marital_status": {
        "Married-civ-spouse": "Married",
        "Married-AF-spouse": "Married",
        "Married-spouse-absent": "Separated",
        "Divorced": "Separated",
        "Never-married": "Never-Married",
    },
    "occupation": {
        "Adm-clerical": "Admin",
        "Armed-Forces": "Military",
        "Exec-managerial": "White-Collar",
        "Prof-specialty": "Professional",
        "Tech-support": "Other",
        "Protective-serv": "Other",
        "Other-service": "Service",
        "Priv-house-serv": "Service",
        **dict.fromkeys(
            ("Craft-repair", "Farming-fishing", "Handlers-cleaners", "Machine-op-inspct", "Transport-moving"),
            "Blue-Collar",
        ),
    },
    "native_country": {
        "Canada": "British-Commonwealth",
        "England": "British-Commonwealth",
        "India": "British-Commonwealth",
        "Ireland": "British-Commonwealth",
        "Scotland": "British-Commonwealth",
        "Hong": "China",
        "Taiwan": "China",
        "Cambodia": "SE-Asia",
        "Laos": "SE-Asia",
        "Philippines": "SE-Asia",
        "Thailand": "SE-Asia",
        "Vietnam": "SE-Asia",
        "Columbia": "South-America",
        "Ecuador": "South-America",
        "El-Salvador": "South-America",
        "Peru": "South-America",
        "Cuba": "Other",
        **dict.fromkeys(
            (
                "Dominican-Republic",
                "Guatemala",
                "Haiti",
                "Honduras",
                "Jamaica",
                "Mexico",
                "Nicaragua",
                "Outlying-US(Guam-USVI-etc)",
                "Puerto-Rico",
                "Trinadad&Tobago",
            ),
            "Latin-America",
        ),
    },
}

# -- CSV --------------------------------------------------------------------------------------------------------


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as the lab's CSV (header, no index); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, lineterminator="\n")
    return path


def load_training_csv(path: str | Path) -> pd.DataFrame:
    """Load labelled training rows as a DataFrame in the lab's schema (``FEATURES`` + ``income``).

    Accepts the lab's own CSV (course column names + ``income``, any column order) and the raw UCI Adult files
    (``adult.data``/``adult.test``: no header or the standard UCI header, ``", "`` separators, ``?`` for missing,
    ``>50K.`` labels). Raw categories are mapped to the course vocabulary; ``fnlwgt``/``education-num`` are dropped.
    Missing categoricals become NaN (training imputes them). Raises ValueError naming the offending columns or
    values for anything else.
    """
    path = Path(path)
    header = _first_record(path)
    names = [name.strip() for name in header]
    if set(names) >= {*FEATURES, LABEL}:
        frame = pd.read_csv(path, skipinitialspace=True, dtype=dict.fromkeys(CATEGORICAL, "str"))
    elif names == list(UCI_COLUMNS):
        frame = _read_uci(path, has_header=True)
    elif len(names) == len(UCI_COLUMNS) and names[0].isdigit():
        frame = _read_uci(path, has_header=False)
    else:
        expected = [*FEATURES, LABEL]
        missing = [name for name in expected if name not in names]
        extra = [name for name in names if name not in expected]
        raise ValueError(
            f"{path}: neither the lab's training CSV nor a raw UCI Adult file;"
            f" missing columns: {', '.join(missing) or '-'}; unexpected columns: {', '.join(extra) or '-'}"
            f" (expected {', '.join(expected)}, or the 15 raw UCI columns {', '.join(UCI_COLUMNS)})"
        )
    return _validated(frame[[*FEATURES, LABEL]].copy(), path)


def _first_record(path: Path) -> list[str]:
    """The first CSV record that is not a UCI comment line (``adult.test`` opens with ``|1x3 Cross validator``)."""
    with path.open(newline="") as handle:
        for record in csv.reader(handle):
            if record and not record[0].startswith("|"):
                return record
    raise ValueError(f"{path}: empty file")


def _read_uci(path: Path, *, has_header: bool) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        header=0 if has_header else None,
        names=list(UCI_COLUMNS),
        skipinitialspace=True,
        na_values=["?"],
        comment="|",
        dtype={name: "str" for name in UCI_COLUMNS if name not in ("age", "fnlwgt", "education-num")}
        | {"capital-gain": "float64", "capital-loss": "float64", "hours-per-week": "float64"},
    )
    frame = frame.drop(columns=["fnlwgt", "education-num"]).rename(columns=_UCI_RENAME)
    for column, mapping in _UCI_MAPS.items():
        frame[column] = frame[column].replace(mapping)
    return frame


def _validated(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check values against the schema; normalise labels (``>50K.`` -> ``>50K``) and numeric dtypes."""
    problems: dict[str, list[str]] = {}
    for column in NUMERIC:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column][numbers.isna() & frame[column].notna()]
        if len(bad):
            problems[column] = _examples(bad)
        frame[column] = numbers
    for column, vocabulary in CATEGORIES.items():
        values = frame[column].str.strip()
        bad = values[values.notna() & ~values.isin(vocabulary)]
        if len(bad):
            problems[column] = _examples(bad)
        frame[column] = values
    labels = frame[LABEL].astype(str).str.strip().str.rstrip(".")
    bad = labels[~labels.isin(CLASSES)]
    if len(bad):
        problems[LABEL] = _examples(bad)
    frame[LABEL] = labels
    if problems:
        detail = "; ".join(f"{column}: {', '.join(values)}" for column, values in problems.items())
        raise ValueError(f"{path}: values outside the schema in columns {', '.join(problems)} ({detail})")
    if frame.empty:
        raise ValueError(f"{path}: no data rows")
    return _integral_numerics(frame)


def _integral_numerics(frame: pd.DataFrame) -> pd.DataFrame:
    """Whole-number numeric columns without gaps become int64 (the course CSVs write ``0.0``)."""
    for column in NUMERIC:
        values = frame[column]
        if values.notna().all() and (values == values.round()).all():
            frame[column] = values.astype(np.int64)
    return frame


def _examples(values: pd.Series, limit: int = 5) -> list[str]:
    return [repr(value) for value in pd.unique(values)[:limit]]
