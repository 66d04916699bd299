from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_lab.data import (
    CATEGORICAL,
    CATEGORIES,
    CLASSES,
    FEATURES,
    LABEL,
    NUMERIC,
    UCI_COLUMNS,
    load_training_csv,
    write_csv,
)
from mlops_lab.synthetic import generate

ROWS = 20_000


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate(ROWS, seed=42)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    pd.testing.assert_frame_equal(generate(2000, seed=7), generate(2000, seed=7))
    assert not generate(2000, seed=7).equals(generate(2000, seed=8))


def test_schema_order_types_and_vocabularies(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == [*FEATURES, LABEL]
    for column in NUMERIC:
        assert frame[column].dtype == np.int64, column
    for column, vocabulary in CATEGORIES.items():
        assert set(frame[column]) <= set(vocabulary), column
        assert frame[column].notna().all()
    assert set(frame[LABEL]) == set(CLASSES)
    assert list(generate(10, with_label=False).columns) == list(FEATURES)
    assert len(generate(0)) == 0


def test_marginals_are_close_to_the_course_batch(frame: pd.DataFrame) -> None:
    share = {column: frame[column].value_counts(normalize=True) for column in CATEGORICAL}
    assert share["work_class"]["Private"] == pytest.approx(0.73, abs=0.02)
    assert share["education"]["High School grad"] == pytest.approx(0.54, abs=0.02)
    assert share["sex"]["Male"] == pytest.approx(0.67, abs=0.02)
    assert share["native_country"]["United-States"] == pytest.approx(0.91, abs=0.02)
    assert share["marital_status"]["Married"] == pytest.approx(0.46, abs=0.03)
    assert frame["age"].between(17, 90).all()
    assert frame["age"].mean() == pytest.approx(39, abs=1.5)
    assert frame["hours_per_week"].between(1, 99).all()
    assert frame["hours_per_week"].mean() == pytest.approx(41, abs=1.5)
    assert (frame["capital_gain"] == 0).mean() == pytest.approx(0.92, abs=0.02)
    assert frame["capital_gain"].max() == 99999
    assert not ((frame["capital_gain"] > 0) & (frame["capital_loss"] > 0)).any()


def test_label_rate_is_sane(frame: pd.DataFrame) -> None:
    assert (frame[LABEL] == ">50K").mean() == pytest.approx(0.24, abs=0.03)


def test_relationship_agrees_with_sex_and_marital_status(frame: pd.DataFrame) -> None:
    husbands = frame[frame["relationship"] == "Husband"]
    wives = frame[frame["relationship"] == "Wife"]
    assert (husbands["sex"] == "Male").all() and (husbands["marital_status"] == "Married").all()
    assert (wives["sex"] == "Female").all() and (wives["marital_status"] == "Married").all()


def test_label_follows_its_drivers(frame: pd.DataFrame) -> None:
    rate = frame[LABEL].eq(">50K").groupby(frame["education"]).mean()
    assert rate["Doctorate"] > rate["Bachelors"] > rate["High School grad"] > rate["Dropout"]
    married = frame[LABEL].eq(">50K").groupby(frame["marital_status"]).mean()
    assert married["Married"] > 2 * married["Never-Married"]


def test_write_then_load_round_trips(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = write_csv(frame.head(500), tmp_path / "nested" / "train.csv")
    pd.testing.assert_frame_equal(load_training_csv(path), frame.head(500), check_dtype=False)
    assert load_training_csv(path)["age"].dtype == np.int64


def test_load_accepts_course_style_floats_and_any_column_order(tmp_path: Path) -> None:
    rows = generate(50, seed=3)
    shuffled = rows[[LABEL, *reversed(FEATURES)]].astype(dict.fromkeys(NUMERIC, float))
    path = tmp_path / "course_style.csv"
    shuffled.to_csv(path, index=False)  # numerics written as 39.0, like the course batch
    loaded = load_training_csv(path)
    assert list(loaded.columns) == [*FEATURES, LABEL]
    pd.testing.assert_frame_equal(loaded, rows, check_dtype=False)
    assert loaded["capital_gain"].dtype == np.int64


UCI_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, HS-grad, 9, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, Mexico, >50K",
    "38, ?, 215646, 11th, 7, Divorced, ?, Unmarried, Black, Female, 0, 1902, 40, ?, <=50K",
    "53, Never-worked, 234721, Some-college, 10, Married-spouse-absent, Tech-support, Own-child, Black, Male, 0, 0, 40, Philippines, >50K",
    "28, Private, 338409, Assoc-voc, 11, Married-AF-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, <=50K",
]


def _check_uci(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == [*FEATURES, LABEL]
    assert frame["education"].tolist() == ["Bachelors", "High School grad", "Dropout", "High School grad", "Associates"]
    assert frame["marital_status"].tolist() == ["Never-Married", "Married", "Separated", "Separated", "Married"]
    assert frame["occupation"].tolist()[:2] == ["Admin", "White-Collar"]
    assert frame["work_class"].tolist()[3] == "Without-pay"
    assert frame["native_country"].tolist()[:2] == ["United-States", "Latin-America"]
    assert frame["native_country"].tolist()[3:] == ["SE-Asia", "Other"]
    row = frame.iloc[2]  # the "?" row
    assert pd.isna(row["work_class"]) and pd.isna(row["occupation"]) and pd.isna(row["native_country"])
    assert frame[LABEL].tolist() == ["<=50K", ">50K", "<=50K", ">50K", "<=50K"]
    assert frame["capital_loss"].tolist() == [0, 0, 1902, 0, 0]
    assert frame["age"].dtype == np.int64


def test_load_raw_uci_adult_data(tmp_path: Path) -> None:
    path = tmp_path / "adult.data"
    path.write_text("\n".join(UCI_ROWS) + "\n")
    _check_uci(load_training_csv(path))


def test_load_raw_uci_adult_test_with_header_comment_and_dotted_labels(tmp_path: Path) -> None:
    dotted = [line.replace("50K", "50K.") for line in UCI_ROWS]
    path = tmp_path / "adult.test"
    path.write_text("|1x3 Cross validator\n" + ",".join(UCI_COLUMNS) + "\n" + "\n".join(dotted) + "\n")
    _check_uci(load_training_csv(path))


def test_load_rejects_a_csv_that_matches_neither_format(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("age,job,salary\n30,x,1\n")
    with pytest.raises(ValueError, match="missing columns: work_class") as caught:
        load_training_csv(path)
    assert "unexpected columns: job, salary" in str(caught.value)


def test_load_rejects_values_outside_the_schema(tmp_path: Path) -> None:
    rows = generate(20, seed=1)
    rows.loc[3, "education"] = "PhD"
    rows.loc[4, LABEL] = "rich"
    path = write_csv(rows, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"columns education, income .*'PhD'.*'rich'"):
        load_training_csv(path)


def test_load_rejects_unmapped_raw_uci_values(tmp_path: Path) -> None:
    path = tmp_path / "adult.data"
    path.write_text(UCI_ROWS[0].replace("United-States", "Atlantis") + "\n")
    with pytest.raises(ValueError, match=r"native_country.*'Atlantis'"):
        load_training_csv(path)


def test_load_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        load_training_csv(path)
