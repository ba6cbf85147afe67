"""ClinicalEncoder: column finding, train-only fitting, errors naming patient and column."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _data import bcnb_table as bcnb

from balnmp_mil.data.clinical import ClinicalEncoder, ClinicalError
from balnmp_mil.training.baseline import fit_clinical_baseline


def test_full_variant_features_and_train_only_statistics():
    df = bcnb()
    train, test = df.iloc[:4], df.iloc[4:]
    enc = ClinicalEncoder().fit(train)
    x = enc.transform(test)
    assert x.dtype == np.float32 and x.shape == (4, len(enc.feature_names))
    age = train["Age(years)"].to_numpy(float)
    z = (test["Age(years)"].to_numpy(float) - age.mean()) / age.std()
    np.testing.assert_allclose(x[:, enc.feature_names.index("age (z)")], z, rtol=1e-5)
    ki = np.array([float(v.rstrip("%")) for v in train["Ki67"]])
    assert enc.stats_["ki67"]["mean"] == pytest.approx(ki.mean())
    assert "tumour_type=invasive ductal carcinoma" in enc.feature_names
    er = x[:, enc.feature_names.index("er_positive")]
    assert er.tolist() == [1, 0, 1, 0]
    # one-hot blocks sum to one per row
    cols = [i for i, n in enumerate(enc.feature_names) if n.startswith("molecular_subtype=")]
    assert x[:, cols].sum(axis=1).tolist() == [1, 1, 1, 1]


def test_paper5_variant_negative_flags():
    df = bcnb()
    enc = ClinicalEncoder("paper5").fit(df)
    assert enc.feature_names == ["age (z)", "tumour_size (z)", "er_negative", "pr_negative",
                                 "her2_negative"]
    x = enc.transform(df)
    assert x[:, 2].tolist() == [0, 1] * 4
    assert x[:, 4].tolist() == [1] * 7 + [0]


def test_columns_found_case_and_spacing_insensitively_and_by_mapping():
    df = bcnb().rename(columns={"Age(years)": "AGE (YEARS)", "Tumour Size(cm)": "tumor_size_cm",
                                "ER": " er ", "PR": "Pr"})
    assert ClinicalEncoder("paper5").fit(df).transform(df).shape == (8, 5)
    df = df.rename(columns={"tumor_size_cm": "diameter"})
    with pytest.raises(ClinicalError, match="no column for 'tumour_size'.*--clinical-column tumour_size="):
        ClinicalEncoder("paper5").fit(df)
    enc = ClinicalEncoder("paper5", columns={"tumour_size": "diameter"}).fit(df)
    assert enc.transform(df).shape == (8, 5)
    with pytest.raises(ClinicalError, match="'nope'.*not in the clinical table"):
        ClinicalEncoder("paper5", columns={"age": "nope"}).fit(df)
    with pytest.raises(ClinicalError, match="unknown clinical field"):
        ClinicalEncoder(columns={"weight": "w"})


def test_unseen_category_errors_or_zeros_with_impute():
    df = bcnb()
    train, test = df.iloc[:4].copy(), df.iloc[4:].copy()
    test.loc[test.index[1], "Tumour Type"] = "Mucinous carcinoma"
    with pytest.raises(ClinicalError) as err:
        ClinicalEncoder().fit(train).transform(test)
    msg = str(err.value)
    assert "patient 6" in msg and "'Tumour Type'" in msg and "mucinous carcinoma" in msg
    assert "--clinical-impute" in msg
    enc = ClinicalEncoder(impute=True).fit(train)
    x = enc.transform(test)
    cols = [i for i, n in enumerate(enc.feature_names) if n.startswith("tumour_type=")]
    assert x[1, cols].tolist() == [0, 0] and x[0, cols].sum() == 1


def test_missing_values_error_or_impute_from_training_rows():
    df = bcnb()
    df.loc[2, "Age(years)"] = np.nan
    df.loc[5, "ER"] = ""
    with pytest.raises(ClinicalError) as err:
        ClinicalEncoder("paper5").fit(df)
    assert "patient 3, column 'Age(years)': missing value" in str(err.value)
    assert "patient 6, column 'ER': missing value" in str(err.value)
    enc = ClinicalEncoder("paper5", impute=True).fit(df)
    x = enc.transform(df)
    assert x[2, 0] == pytest.approx((enc.stats_["age"]["median"] - enc.stats_["age"]["mean"])
                                    / enc.stats_["age"]["std"])
    assert x[5, 2] == 1 - enc.stats_["er"]["most_frequent"]


def test_unreadable_values_always_error():
    df = bcnb()
    df["Ki67"] = df["Ki67"].astype(object)
    df.loc[1, "Ki67"] = "high"
    df.loc[3, "ER"] = "Equivocal"
    for impute in (False, True):
        with pytest.raises(ClinicalError) as err:
            ClinicalEncoder(impute=impute).fit(df)
        assert "patient 2, column 'Ki67': cannot read 'high'" in str(err.value)
        assert "patient 4, column 'ER'" in str(err.value)


def test_patient_ids_from_index_when_no_column():
    df = bcnb().drop(columns=["Patient ID"])
    df.index = [f"P{i}" for i in range(8)]
    df.loc["P3", "Age(years)"] = None
    with pytest.raises(ClinicalError, match="patient P3, column 'Age"):
        ClinicalEncoder("paper5").fit(df)


def test_json_round_trip_and_not_fitted():
    df = bcnb()
    enc = ClinicalEncoder(impute=True).fit(df.iloc[:4])
    back = ClinicalEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert back.feature_names == enc.feature_names
    np.testing.assert_array_equal(back.transform(df), enc.transform(df))
    with pytest.raises(ClinicalError, match="not fitted"):
        ClinicalEncoder().transform(df)
    with pytest.raises(ClinicalError, match="not a saved clinical encoder"):
        ClinicalEncoder.from_dict({"variant": "full"})
    with pytest.raises(ClinicalError, match="unknown clinical variant"):
        ClinicalEncoder("paper7")


def test_clinical_baseline_learns_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    model = fit_clinical_baseline(x[:150], y[:150], seed=0)
    p = model.predict_proba(x[150:])
    assert p.shape == (50, 2) and ((p[:, 1] > 0.5) == y[150:]).mean() > 0.8
    assert fit_clinical_baseline(x[:150], y[:150]).predict_proba(x[:2]).shape == (2, 2)
    with pytest.raises(ValueError, match="two classes"):
        fit_clinical_baseline(x[:10], np.zeros(10))


def test_encodes_the_synthetic_bcnb_table():
    synth = pytest.importorskip("balnmp_cache.synthetic.clinical")
    rng = np.random.default_rng(0)
    table = synth.make_clinical_table(rng, synth.assign_aln_status(rng, 40))
    table.index = [str(p) for p in table["Patient ID"]]
    enc = ClinicalEncoder("full", impute=True).fit(table.iloc[:30])
    x = enc.transform(table)
    assert x.shape == (40, len(enc.feature_names)) and np.isfinite(x).all()
    assert {"age (z)", "ki67 (z)", "er_positive"} <= set(enc.feature_names)
    assert ClinicalEncoder("paper5").fit(table).transform(table).shape == (40, 5)


def test_full_variant_warns_that_surgical_is_chosen_knowing_the_nodes():
    import warnings

    from balnmp_mil.errors import MILWarning

    df = bcnb()
    with pytest.warns(MILWarning, match=r"'Surgical'.*knowledge of the lymph nodes.*paper5"):
        ClinicalEncoder("full").fit(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClinicalEncoder("paper5").fit(df)  # the paper's five: no warning


def test_blank_histological_grading_names_patient_column_and_fixes():
    df = bcnb()
    df["Histological grading"] = df["Histological grading"].astype(object)
    df.loc[[1, 4], "Histological grading"] = None
    with pytest.warns(UserWarning), pytest.raises(ClinicalError) as err:
        ClinicalEncoder("full").fit(df)
    text = str(err.value)
    assert "patient 2, column 'Histological grading': missing value" in text
    assert "Column 'Histological grading' is blank for 2 patient(s)" in text
    assert "--clinical-variant paper5" in text and "--clinical-impute" in text
    with pytest.warns(UserWarning):
        ClinicalEncoder("full", impute=True).fit(df)  # imputed: no error


def test_command_line_default_is_the_papers_five_variables():
    from balnmp_mil.data.clinical import DEFAULT_VARIANT, VARIANTS
    from balnmp_mil.workflow.config import TrainConfig

    assert DEFAULT_VARIANT == "paper5"
    assert VARIANTS.get(DEFAULT_VARIANT).fields == ("age", "tumour_size", "er", "pr", "her2")
    assert TrainConfig.__dataclass_fields__["clinical_variant"].default == "paper5"


def test_official_variant_reads_the_preprocessed_table_as_it_is() -> None:
    """`official`: the columns of the official preprocessed-type-K.xlsx, values unchanged,
    patients by `p_id`; a raw BCNB table is refused naming the column it lacks."""
    import pandas as pd

    cols = ["p_id", "age", "tumor_size", "is_er_negative", "is_pr_negative", "is_her2_negative"]
    df = pd.DataFrame([[1, 1.539847, 0.909377, 0, 0, 1], [2, -1.513573, 1.500613, 1, 1, 1],
                       [4, 0.173843, 0.081647, 1, 1, 0]], columns=cols)
    enc = ClinicalEncoder("official").fit(df)
    np.testing.assert_allclose(enc.transform(df.iloc[[2, 0]]),
                               df.iloc[[2, 0], 1:].to_numpy(np.float32))
    assert enc.feature_names == ["official_age", "official_tumour_size", "er_negative",
                                 "pr_negative", "her2_negative"]
    again = ClinicalEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(again.transform(df), enc.transform(df))
    raw = pd.DataFrame({"Patient ID": [1], "Age(years)": [50], "Tumour Size(cm)": [2.0],
                        "ER": ["Positive"], "PR": ["Positive"], "HER2": ["Negative"]})
    with pytest.raises(ClinicalError, match="official_age"):
        ClinicalEncoder("official").fit(raw)
