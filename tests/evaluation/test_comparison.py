"""Method comparison on out-of-fold tables: metrics equal the reference implementations (and lifelines /
scikit-survival), intervals, paired differences, degenerate inputs, validation and written outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import GRADES, Case, Manifest
from sarcomakit.evaluation.bootstrap import paired_bootstrap_difference
from sarcomakit.evaluation.comparison import compare_methods
from sarcomakit.evaluation.comparison_tables import comparison_markdown, write_comparison
from sarcomakit.evaluation.grade import grade_metrics
from sarcomakit.evaluation.method_metrics import method_metrics
from sarcomakit.evaluation.oof import OOF_COLUMNS, load_oof, validate_oof
from sarcomakit.evaluation.oof_source import load_oof_source
from sarcomakit.evaluation.survival import (
    breslow_survival_function,
    cumulative_dynamic_auc,
    default_evaluation_times,
    harrell_c_index,
    integrated_brier_score,
    logrank_test,
    survival_metrics,
    uno_c_index,
)
from sarcomakit.evaluation.task_data import out_of_fold_survival

N_BOOTSTRAP = 150


def make_oof(n: int = 60, seed: int = 0, folds: int = 3) -> pd.DataFrame:
    """A planted signal: 'multitask' predicts grade and risk well and segments best, 'radiomics' predicts
    grade and risk poorly and has no masks, 'segmentation' has masks only."""
    rng = np.random.default_rng(seed)
    grade = rng.choice(3, size=n, p=[0.3, 0.3, 0.4])
    latent = grade - 1 + rng.normal(0, 0.5, n)
    death = rng.exponential(900 * np.exp(-latent))
    censor = rng.uniform(300, 2500, n)
    time = np.round(np.minimum(death, censor))
    event = (death <= censor).astype(int)
    rows = []
    for method, strength, risk_noise, dice_mean in (("multitask", 3.0, 0.3, 0.86), ("segmentation", None, None, 0.80),
                                                   ("radiomics", 0.4, 1.5, None)):
        for i in range(n):
            row = {"case_id": f"case{i:03d}", "method": method, "fold": i % folds, "grade_true": GRADES[grade[i]],
                   "time": time[i], "event": event[i]}
            if strength is not None:
                logits = strength * np.eye(3)[grade[i]] + rng.normal(0, 1, 3)
                p = np.exp(logits) / np.exp(logits).sum()
                row.update(p_low=p[0], p_intermediate=p[1], p_high=p[2], grade_pred=GRADES[int(p.argmax())],
                           log_risk=latent[i] * (1.0 if risk_noise < 1 else 0.3) + rng.normal(0, risk_noise))
            if dice_mean is not None:
                row.update(dice=float(np.clip(rng.normal(dice_mean, 0.03), 0, 1)), hd95=float(rng.gamma(4, 1.5)))
            rows.append(row)
    table = pd.DataFrame(rows)
    for method in ("multitask", "radiomics"):
        mine = table["method"] == method
        for f in range(folds):
            cutoff = table.loc[mine & (table["fold"] != f), "log_risk"].median()
            held_out = mine & (table["fold"] == f)
            table.loc[held_out, "train_risk_cutoff"] = cutoff
            table.loc[held_out, "risk_group"] = np.where(table.loc[held_out, "log_risk"] > cutoff, "high", "low")
    return table


@pytest.fixture(scope="module")
def oof() -> pd.DataFrame:
    return validate_oof(make_oof())


@pytest.fixture(scope="module")
def comparison(oof):
    return compare_methods(oof, "multitask", n_bootstrap=N_BOOTSTRAP, seed=3)


# ---------------------------------------------------------------------- metrics against references
def test_grade_metrics_equal_grade_metrics_with_the_same_resamples(oof):
    rows = oof[oof["method"] == "multitask"]
    ours = method_metrics(rows, n_bootstrap=N_BOOTSTRAP, seed=5)
    proba = rows[["p_low", "p_intermediate", "p_high"]].to_numpy()
    reference = grade_metrics(rows["grade_true"].tolist(), proba, n_bootstrap=N_BOOTSTRAP, seed=5)
    for name in ("auc_macro_ovr", "auc_high_vs_rest", "balanced_accuracy", "ece_top_label", "ece_high"):
        for key in ("value", "ci_low", "ci_high"):
            assert ours[name][key] == pytest.approx(reference[name][key], abs=1e-12), (name, key)
        assert ours[name]["n"] == len(rows)


def test_grade_auc_matches_scikit_learn(oof):
    metrics = pytest.importorskip("sklearn.metrics")
    rows = oof[oof["method"] == "radiomics"]
    proba = rows[["p_low", "p_intermediate", "p_high"]].to_numpy()
    y = rows["grade_true"].map(GRADES.index).to_numpy()
    ours = method_metrics(rows, n_bootstrap=0)
    assert ours["auc_macro_ovr"]["value"] == pytest.approx(
        metrics.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert ours["auc_high_vs_rest"]["value"] == pytest.approx(metrics.roc_auc_score(y == 2, proba[:, 2]))
    assert ours["balanced_accuracy"]["value"] == pytest.approx(metrics.balanced_accuracy_score(y, proba.argmax(1)))


def test_survival_metrics_equal_the_survival_module(oof):
    rows = oof[oof["method"] == "multitask"]
    time, event, risk = (rows[c].to_numpy(float) for c in ("time", "event", "log_risk"))
    times = default_evaluation_times(time, event)
    grid = np.linspace(*np.percentile(time, [10, 90]), 50)
    ours = method_metrics(rows, n_bootstrap=0)
    assert ours["c_index_harrell"]["value"] == pytest.approx(harrell_c_index(time, event, risk))
    assert ours["c_index_uno"]["value"] == pytest.approx(uno_c_index(time, event, risk, time, event, tau=time.max()))
    aucs, mean_auc = cumulative_dynamic_auc(time, event, risk, times, time, event)
    assert ours["td_auc_mean"]["value"] == pytest.approx(mean_auc)
    for t, auc in zip(times, aucs, strict=True):
        assert ours[f"td_auc@{t:g}"]["value"] == pytest.approx(auc)
    # Breslow baseline of each fold from the other folds' out-of-fold risks.
    fold = rows["fold"].to_numpy()
    survival = np.empty((time.size, grid.size))
    for f in np.unique(fold):
        others = fold != f
        survival[~others] = breslow_survival_function(time[others], event[others], risk[others])(risk[~others], grid)
    assert ours["integrated_brier_score"]["value"] == pytest.approx(
        integrated_brier_score(time, event, survival, grid, time, event))
    groups = (rows["risk_group"] == "high").to_numpy()
    assert ours["logrank_p"]["value"] == pytest.approx(logrank_test(time, event, groups)["p_value"])
    assert np.isnan(ours["logrank_p"]["ci_low"])


@pytest.mark.parametrize("times", [None, [700.0]])
def test_survival_intervals_equal_survival_metrics_with_the_same_references(oof, times):
    # Without folds the comparison's references are those survival_metrics takes when the evaluated cases are
    # their own reference set (G, tau, Breslow baseline and Brier grid from the same cases): the two share
    # one resampled computation, so values and intervals agree exactly.
    rows = oof[oof["method"] == "multitask"].assign(fold=np.nan)
    time, event, risk = (rows[c].to_numpy(float) for c in ("time", "event", "log_risk"))
    ours = method_metrics(rows, n_bootstrap=60, seed=2, times=times)
    theirs = survival_metrics(time, event, risk, times=times, n_bootstrap=60, seed=2)
    shared = [name for name in theirs if name in ours and name != "logrank_p"]
    assert {"c_index_harrell", "c_index_uno", "integrated_brier_score"} <= set(shared)
    assert any(name.startswith("td_auc@") for name in shared)
    for name in shared:
        for key in ("value", "ci_low", "ci_high"):
            assert ours[name][key] == theirs[name][key], (name, key)
    # with one evaluation time the mean AUC only repeats it: the comparison leaves it out
    assert ("td_auc_mean" in ours) == (times is None)


def test_survival_metrics_match_lifelines_and_scikit_survival(oof):
    lifelines_utils = pytest.importorskip("lifelines.utils")
    lifelines_statistics = pytest.importorskip("lifelines.statistics")
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    from sksurv.util import Surv

    rows = oof[oof["method"] == "radiomics"]
    time, event, risk = (rows[c].to_numpy(float) for c in ("time", "event", "log_risk"))
    ours = method_metrics(rows, n_bootstrap=0)
    # lifelines expects a score where higher means longer survival: pass -risk.
    assert ours["c_index_harrell"]["value"] == pytest.approx(lifelines_utils.concordance_index(time, -risk, event))
    outcome = Surv.from_arrays(event.astype(bool), time)
    uno = sksurv_metrics.concordance_index_ipcw(outcome, outcome, risk, tau=time.max())[0]
    assert ours["c_index_uno"]["value"] == pytest.approx(uno)
    times = default_evaluation_times(time, event)
    _, mean_auc = sksurv_metrics.cumulative_dynamic_auc(outcome, outcome, risk, times)
    assert ours["td_auc_mean"]["value"] == pytest.approx(mean_auc)
    high = (rows["risk_group"] == "high").to_numpy()
    expected = lifelines_statistics.logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    assert ours["logrank_p"]["value"] == pytest.approx(expected)


def test_segmentation_means_and_intervals(oof):
    rows = oof[oof["method"] == "segmentation"]
    ours = method_metrics(rows, n_bootstrap=N_BOOTSTRAP)
    assert set(ours) == {"dice_mean", "hd95_mean"}
    assert ours["dice_mean"]["value"] == pytest.approx(rows["dice"].mean())
    assert ours["hd95_mean"]["value"] == pytest.approx(rows["hd95"].mean())


def test_intervals_contain_the_point_estimates(comparison):
    with_interval = comparison.metrics.dropna(subset=["ci_low", "ci_high"])
    assert len(with_interval) >= 20
    assert ((with_interval["ci_low"] <= with_interval["value"] + 1e-12)
            & (with_interval["value"] <= with_interval["ci_high"] + 1e-12)).all()
    assert (with_interval["ci_low"] < with_interval["ci_high"]).all()


def test_planted_signal_is_recovered(comparison):
    values = comparison.metrics.set_index(["method", "metric"])["value"]
    assert values["multitask", "auc_macro_ovr"] > 0.9 > values["radiomics", "auc_macro_ovr"]
    assert values["multitask", "c_index_harrell"] > values["radiomics", "c_index_harrell"]
    assert values["multitask", "dice_mean"] > values["segmentation", "dice_mean"]
    assert "radiomics: segmentation metrics left out: no 'dice' or 'hd95' values." in comparison.notes
    assert any(note.startswith("segmentation: grade metrics left out") for note in comparison.notes)


# ---------------------------------------------------------------------- paired differences
def test_paired_differences_have_the_planted_sign_and_small_p(comparison):
    diffs = comparison.differences.set_index(["method", "metric"])
    for metric in ("auc_macro_ovr", "auc_high_vs_rest", "c_index_harrell"):
        row = diffs.loc[("radiomics", metric)]
        assert row["difference"] < 0 and row["ci_high"] < 0 and row["p_value"] < 0.05, metric
        assert row["better"] == "multitask"
    dice = diffs.loc[("segmentation", "dice_mean")]
    assert dice["difference"] < 0 and dice["p_value"] < 0.05 and dice["n"] == 60
    assert ("segmentation", "auc_macro_ovr") not in diffs.index  # no shared grade task
    assert set(comparison.differences["method"]) == {"segmentation", "radiomics"}


def test_mean_differences_are_the_bootstrap_modules_paired_difference(oof, comparison):
    mine = oof[oof["method"] == "segmentation"].set_index("case_id")["dice"]
    reference = oof[oof["method"] == "multitask"].set_index("case_id")["dice"].loc[mine.index]
    expected = paired_bootstrap_difference(mine.to_numpy(), reference.to_numpy(), n_resamples=N_BOOTSTRAP, seed=3)
    row = comparison.differences.set_index(["method", "metric"]).loc[("segmentation", "dice_mean")]
    for key in ("difference", "ci_low", "ci_high", "p_value"):
        assert row[key] == pytest.approx(expected[key])


def test_identical_methods_differ_by_zero_with_p_one(oof):
    copy = oof[oof["method"] == "multitask"].assign(method="copy")
    result = compare_methods(pd.concat([oof, copy]), "multitask", n_bootstrap=50, methods=["multitask", "copy"])
    assert len(result.differences) > 5
    assert (result.differences["difference"] == 0).all()
    assert (result.differences["p_value"] == 1).all()


def test_differences_use_only_the_cases_both_methods_predicted(oof):
    partial = oof[~((oof["method"] == "radiomics") & (oof["case_id"] < "case020"))]
    result = compare_methods(partial, n_bootstrap=20, methods=["multitask", "radiomics"])
    assert set(result.differences["n"]) == {40}
    assert result.metrics.set_index(["method", "metric"]).loc[("multitask", "auc_macro_ovr"), "n"] == 60


# ---------------------------------------------------------------------- degenerate inputs
def test_no_events_gives_notes_not_metrics(oof):
    rows = oof[oof["method"] == "multitask"].assign(event=0.0)
    notes: list[str] = []
    metrics = method_metrics(rows, n_bootstrap=20, notes=notes)
    assert "c_index_harrell" not in metrics and "logrank_p" not in metrics
    assert "auc_macro_ovr" in metrics and "dice_mean" in metrics
    assert any("no death" in note for note in notes)


def test_single_grade_class_drops_the_aucs_with_a_note(oof):
    rows = oof[oof["method"] == "multitask"].assign(grade_true="high")
    notes: list[str] = []
    metrics = method_metrics(rows, n_bootstrap=20, notes=notes)
    assert "auc_macro_ovr" not in metrics and "auc_high_vs_rest" not in metrics
    assert np.isfinite(metrics["balanced_accuracy"]["value"]) and np.isfinite(metrics["ece_high"]["value"])
    assert any("only grade high" in note for note in notes)
    assert all(np.isfinite(entry["value"]) for entry in metrics.values())


def test_missing_columns_leave_only_the_tasks_present(tmp_path):
    table = make_oof(n=30)[["case_id", "method", "fold", "dice", "hd95"]]
    table = table[table["method"] != "radiomics"]
    path = tmp_path / "oof.csv"
    table.to_csv(path, index=False)
    result = compare_methods(path, n_bootstrap=20)
    assert set(result.table.index) == {"dice_mean", "hd95_mean"}
    assert set(result.differences["metric"]) == {"dice_mean", "hd95_mean"}
    for method in ("multitask", "segmentation"):
        assert any(note.startswith(f"{method}: grade metrics left out") for note in result.notes)
        assert any(note.startswith(f"{method}: survival metrics left out") for note in result.notes)


def test_infinite_hd95_is_left_out_with_a_note(oof):
    rows = oof[oof["method"] == "segmentation"].copy()
    rows.loc[rows.index[:3], "hd95"] = np.inf
    notes: list[str] = []
    metrics = method_metrics(rows, n_bootstrap=20, notes=notes)
    assert metrics["hd95_mean"]["n"] == len(rows) - 3
    assert np.isfinite(metrics["hd95_mean"]["value"])
    assert any("infinite hd95" in note for note in notes)


def test_single_fold_fits_the_baseline_on_all_cases(oof):
    rows = oof[oof["method"] == "multitask"]
    time, event, risk = (rows[c].to_numpy(float) for c in ("time", "event", "log_risk"))
    grid = np.linspace(100, 900, 5)
    notes: list[str] = []
    survival = out_of_fold_survival(time, event, risk, np.zeros(time.size), grid, notes)
    np.testing.assert_allclose(survival, breslow_survival_function(time, event, risk)(risk, grid))
    assert notes and "all out-of-fold cases" in notes[0]


def test_risk_groups_fall_back_to_the_training_cutoff(oof):
    rows = oof[oof["method"] == "multitask"].assign(risk_group=None)
    notes: list[str] = []
    metrics = method_metrics(rows, n_bootstrap=0, notes=notes)
    time, event = rows["time"].to_numpy(float), rows["event"].to_numpy(float)
    high = rows["log_risk"].to_numpy() > rows["train_risk_cutoff"].to_numpy()
    assert metrics["logrank_p"]["value"] == pytest.approx(logrank_test(time, event, high)["p_value"])
    assert any("train_risk_cutoff" in note for note in notes)


def test_unknown_reference_is_a_user_error(oof):
    with pytest.raises(UserInputError, match="nnunet"):
        compare_methods(oof, "nnunet", n_bootstrap=0)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(("change", "column", "problem"), [
    (lambda t: t.drop(columns="method"), "method", "no 'method' column"),
    (lambda t: t.assign(grade_true=t["grade_true"].where(t.index != 4, "G3")), "grade_true", "other than low"),
    (lambda t: t.assign(dice=t["dice"].astype(object).where(t.index != 2, "n/a")), "dice", "not a number"),
    (lambda t: t.assign(p_high=t["p_high"].where(t.index != 0, 1.5)), "p_high", "outside [0, 1]"),
    (lambda t: t.assign(p_low=t["p_low"].where(t.index != 0, 0.9)), "p_high", "sum to one"),
    (lambda t: t.assign(time=t["time"].where(t.index != 1, np.nan)), "time", "event status"),
    (lambda t: t.assign(time=t["time"].where(t.index != 1, -3)), "time", "negative"),
    (lambda t: t.assign(event=t["event"].where(t.index != 1, 2)), "event", "other than 0 or 1"),
    (lambda t: t.assign(risk_group=t["risk_group"].where(t.index != 1, "medium")), "risk_group", "other than low"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), "case_id", "listed twice"),
])
def test_bad_tables_name_the_file_and_column(tmp_path, change, column, problem):
    path = tmp_path / "oof_predictions.csv"
    change(make_oof(n=12)).to_csv(path, index=False)
    with pytest.raises(UserInputError) as info:
        load_oof(path)
    message = str(info.value)
    assert str(path) in message and f"'{column}'" in message and problem in message


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_oof(tmp_path / "absent.csv")


def test_loaded_table_has_every_column_and_normalised_values(tmp_path):
    table = make_oof(n=6)[["case_id", "method", "grade_true", "p_low", "p_intermediate", "p_high"]]
    table = table[table["method"] == "multitask"].assign(grade_true=lambda t: t["grade_true"].str.upper())
    table.loc[table.index[0], "grade_true"] = ""
    path = tmp_path / "oof.csv"
    table.to_csv(path, index=False)
    loaded = load_oof(path)
    assert list(loaded.columns)[:len(OOF_COLUMNS)] == list(OOF_COLUMNS)
    assert loaded["grade_true"].iloc[0] is None
    assert set(loaded["grade_true"].dropna()) <= set(GRADES)
    assert loaded["dice"].isna().all()


# ---------------------------------------------------------------------- outputs and sources
def test_write_comparison_writes_csv_markdown_and_differences(tmp_path, comparison):
    paths = write_comparison(comparison, tmp_path / "out")
    table = pd.read_csv(paths["comparison.csv"], index_col="metric_name")
    assert {"multitask", "radiomics", "segmentation", "multitask value", "radiomics ci_low"} <= set(table.columns)
    assert table.loc["dice_mean", "multitask value"] == pytest.approx(
        comparison.table.loc["dice_mean", "multitask value"], rel=1e-5)
    assert "[" in table.loc["c_index_harrell", "multitask"]
    differences = pd.read_csv(paths["differences.csv"])
    assert len(differences) == len(comparison.differences)
    markdown = paths["comparison.md"].read_text(encoding="utf-8")
    assert markdown == comparison_markdown(comparison)
    assert "| metric | multitask | segmentation | radiomics |" in markdown
    assert "Paired differences against multitask" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["comparison.csv", "comparison.md",
                                                                     "differences.csv"]


def test_experiment_and_run_folders_are_read(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    make_oof(n=20).to_csv(experiment / "oof_predictions.csv", index=False)
    (experiment / "masks").mkdir()
    Manifest(channels=["t1"], cases=[Case("case000", {"t1": tmp_path / "a.nii.gz"})]).save(experiment / "cohort.json")
    (experiment / "experiment.json").write_text(json.dumps({
        "methods": ["radiomics", "multitask", "segmentation", "grade_only"], "reference": "multitask", "folds": 3,
        "seed": 1, "cohort": "cohort.json", "prediction_dirs": {"multitask": "masks", "segmentation": "gone"}}))
    source = load_oof_source(experiment)
    assert source.kind == "experiment" and source.methods == ["radiomics", "multitask", "segmentation"]
    assert source.choose_reference() == "multitask" and source.choose_reference("radiomics") == "radiomics"
    assert source.cohort is not None and source.cohort.case_ids == ["case000"]
    assert source.prediction_dirs == {"radiomics": None, "multitask": experiment / "masks", "segmentation": None}
    assert any("grade_only" in note for note in source.notes) and any("gone" in note for note in source.notes)
    with pytest.raises(UserInputError, match="nnunet"):
        source.choose_reference("nnunet")

    run = tmp_path / "run"
    run.mkdir()
    make_oof(n=20).query("method == 'multitask'").to_csv(run / "oof_predictions.csv", index=False)
    source = load_oof_source(run)
    assert source.kind == "run" and source.methods == ["multitask"] and source.cohort is None
    assert source.choose_reference() == "multitask" and source.prediction_dirs == {"multitask": None}


def test_folder_without_oof_table_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="oof_predictions.csv"):
        load_oof_source(tmp_path)
