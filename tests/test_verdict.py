"""The audit's verdict is one test over several statistics at one rate: the smallest
per-statistic p-value, calibrated (full conformal) against the same minimum over the honest
models. Simulated honest populations check the rate it promises; an OR of per-statistic
thresholds, the rule it replaces, does not hold that rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisondetect.errors import PoisonDetectError
from poisondetect.metrics import (
    calibrated_threshold,
    guaranteed_fpr,
    replicates_needed,
    verdict_cutoff,
    verdict_pvalue,
)
from poisondetect.model_level.calibration import verdict_scores


def _honest(rng, n, k=2, rho=0.3):
    """``n`` honest models' scores on ``k`` correlated, differently scaled statistics."""
    cov = np.full((k, k), rho) + (1 - rho) * np.eye(k)
    z = rng.multivariate_normal(np.zeros(k), cov, size=n)
    return np.exp(z) * np.arange(1, k + 1)  # skewed, on other scales


@pytest.mark.parametrize("n", [19, 39])
@pytest.mark.parametrize("combine", ["smallest_p", "fisher"])
def test_the_verdict_holds_its_rate_where_an_or_of_thresholds_does_not(n, combine):
    rng = np.random.default_rng(0)
    trials, fpr = 3000, 0.05
    verdict_alarms = or_alarms = 0
    for _ in range(trials):
        pop = _honest(rng, n + 1)
        honest, new = pop[:n], pop[n]
        verdict_alarms += verdict_pvalue(new, honest, combine) <= verdict_cutoff(n, fpr) + 1e-12
        thr = [calibrated_threshold(honest[:, j], fpr) for j in range(2)]
        or_alarms += any(new[j] > thr[j] for j in range(2))
    rate = guaranteed_fpr(n, fpr)
    slack = 3 * np.sqrt(rate * (1 - rate) / trials)
    assert verdict_alarms / trials <= rate + slack
    assert or_alarms / trials > rate + slack  # the rule the verdict replaces: about twice it


@pytest.mark.parametrize("combine", ["smallest_p", "fisher"])
def test_a_model_far_beyond_the_honest_on_one_statistic_is_flagged_with_19_of_them(combine):
    """Even when it is middling on four other statistics, and its own score would widen the
    spread Fisher's standardisation measures it by, were it counted there."""
    rng = np.random.default_rng(1)
    honest = np.c_[_honest(rng, 19), rng.normal(size=(19, 3))]
    new = np.median(honest, axis=0)
    new[1] = honest[:, 1].max() * 100
    p = verdict_pvalue(new, honest, combine)
    assert p == pytest.approx(1 / 20)
    assert p <= verdict_cutoff(19, 0.05)
    # a model in the middle of the population is not
    assert verdict_pvalue(np.median(honest, axis=0), honest, combine) > verdict_cutoff(19, 0.05)


@pytest.mark.parametrize("combine", ["smallest_p", "fisher"])
def test_the_verdict_p_value_does_not_depend_on_a_statistics_scale(combine):
    rng = np.random.default_rng(2)
    honest, new = _honest(rng, 30), _honest(rng, 1)[0]
    scale, shift = np.array([1e-3, 1e4]), np.array([5.0, -300.0])
    p = verdict_pvalue(new, honest, combine)
    assert p == verdict_pvalue(new * scale, honest * scale, combine)
    assert p == verdict_pvalue(new * scale + shift, honest * scale + shift, combine)


def test_fisher_adds_up_a_model_unusual_on_several_statistics():
    """Five independent statistics, the model at 1.6 honest standard deviations on each: no
    single one stands out (several honest models go further on some statistic), the evidence
    together does. A model far beyond on one statistic is flagged either way."""
    rng = np.random.default_rng(4)
    honest = rng.normal(size=(39, 5))
    new = honest.mean(axis=0) + 1.6 * honest.std(axis=0, ddof=1)
    cut = verdict_cutoff(39, 0.05)
    assert verdict_pvalue(new, honest, "smallest_p") > cut
    assert verdict_pvalue(new, honest, "fisher") <= cut
    far = np.median(honest, axis=0)
    far[2] = honest[:, 2].max() + 10
    assert verdict_pvalue(far, honest, "fisher") <= cut
    assert verdict_pvalue(far, honest, "smallest_p") <= cut
    # a statistic constant over the honest models and the new one changes nothing
    const = np.c_[honest, np.full(39, 3.0)]
    p = verdict_pvalue(new, honest, "fisher")
    assert verdict_pvalue(np.r_[new, 3.0], const, "fisher") == p
    with pytest.raises(PoisonDetectError, match="calibration.combine must be one of"):
        verdict_pvalue(new, honest, "mean")


def test_cutoff_guaranteed_rate_and_replicates_needed_agree():
    for fpr in (0.01, 0.05, 0.1):
        n1 = replicates_needed(fpr)
        assert guaranteed_fpr(n1, fpr) <= fpr < guaranteed_fpr(n1 - 1, fpr)
        assert verdict_cutoff(n1, fpr) == guaranteed_fpr(n1, fpr)
        # two statistics: even with the other one's extreme held by an honest model, a model
        # that tops one statistic still lies at or under the cutoff
        n2 = replicates_needed(fpr, 2)
        assert 2 / (n2 + 1) <= fpr < 2 / n2
    assert verdict_cutoff(0, 0.05) == 0.0
    assert verdict_pvalue([1.0, 2.0], np.empty((0, 2))) == 1.0


def _table(values: dict[str, tuple[str, float, float]]) -> pd.DataFrame:
    rows = []
    for model, (split, a, b) in values.items():
        rows.append(dict(model=model, split=split, detector="x", statistic="score", value=a))
        rows.append(dict(model=model, split=split, detector="y", statistic="s", value=b))
    return pd.DataFrame(rows)


def test_verdict_rows_score_fitting_replicates_out_of_sample():
    rng = np.random.default_rng(3)
    values = {f"honest_paper_r{i}": ("fit", *rng.normal(size=2)) for i in range(25)}
    values["honest_paper_r99"] = ("heldout", 0.0, 0.0)
    values["flip_f50_e2_r0"] = ("attack", 0.1, 9.0)
    v = verdict_scores(_table(values), ["x", "y:s"], 0.05).set_index("model")
    assert (v["n_calibration"][[m for m in values if values[m][0] == "fit"]] == 24).all()
    assert v.loc["honest_paper_r99", "n_calibration"] == 25
    fit = np.array([values[f"honest_paper_r{i}"][1:] for i in range(1, 25)])
    assert v.loc["honest_paper_r0", "pvalue"] == verdict_pvalue(values["honest_paper_r0"][1:], fit)
    assert v.loc["flip_f50_e2_r0", "calibrated_flagged"]
    assert not v.loc["honest_paper_r99", "calibrated_flagged"]
    # the value / threshold pair agrees with the flag (roc.csv reads the margin)
    margin = v["value"] - v["calibrated_threshold"]
    assert ((margin > 0) == v["calibrated_flagged"]).all()
    assert (v["guaranteed_fpr"] <= 0.05).all()


def test_verdict_rows_combine_as_asked():
    """The scores table's verdict rows with Fisher's sum: each model's p-value is the one
    verdict_pvalue gives against the other fitting replicates, and a model a little unusual on
    both statistics is flagged where the smallest p-value does not flag it."""
    rng = np.random.default_rng(5)
    values = {f"honest_paper_r{i}": ("fit", *rng.normal(size=2)) for i in range(39)}
    fit = np.array([values[f"honest_paper_r{i}"][1:] for i in range(39)])
    both = fit.mean(axis=0) + 2.0 * fit.std(axis=0, ddof=1)
    values["pattern_f50_e2_r0"] = ("attack", *both)
    table = _table(values)
    fisher = verdict_scores(table, ["x", "y:s"], 0.05, "fisher").set_index("model")
    smallest = verdict_scores(table, ["x", "y:s"], 0.05).set_index("model")
    assert fisher.loc["honest_paper_r0", "pvalue"] == verdict_pvalue(fit[0], fit[1:], "fisher")
    assert fisher.loc["pattern_f50_e2_r0", "calibrated_flagged"]
    assert not smallest.loc["pattern_f50_e2_r0", "calibrated_flagged"]


def _ml(sampled, verdict=("ae_class", "prediction_flow:largest"), fpr=0.05):
    from poisondetect.config import validate_config

    cfg = {
        "model_level": {
            "finetune": {"sampled": {"replicates": sampled}},
            "calibration": {"verdict": list(verdict), "fpr": fpr},
        }
    }
    return validate_config(cfg)["model_level"]


@pytest.mark.parametrize(
    "fpr, verdict",
    [(0.05, ["ae_class"]), (0.05, ["ae_class", "prediction_flow:largest"]), (0.1, ["ae_class"])],
)
def test_auto_sizes_the_sampled_null_to_reach_the_rate(fpr, verdict):
    from poisondetect import population as P

    ml = _ml("auto", verdict, fpr)
    need = replicates_needed(fpr)
    scenario = ml["scenarios"][0]
    assert P.n_fit_honest(ml, scenario) >= need
    assert P.calibration_warning(ml) is None
    fewer = _ml(P.honest_replicates(ml, "sampled") - 2, verdict, fpr)
    assert P.n_fit_honest(fewer, scenario) < need  # the smallest null that does
    warning = P.calibration_warning(fewer)
    assert f"needs {need}" in warning and "auto" in warning


def test_the_conclusions_give_the_verdicts_rates_with_exact_intervals():
    from poisondetect.model_level.collection import verdict_lines

    rows = [("attack", 0.9, True), ("attack", 0.5, True), ("attack", 0.01, False)]
    rows += [("heldout", np.nan, False)] * 9 + [("heldout", np.nan, True), ("fit", np.nan, False)]
    det = pd.DataFrame(
        [
            dict(dataset="d", arch="cnn", scenario="s", split=sp, attack_success_test=a,
                 verdict_flagged=f, verdict_guaranteed_fpr=0.05)
            for sp, a, f in rows
        ]
    )  # fmt: skip
    (line,) = verdict_lines(det, 0.2)
    assert line.startswith("d/cnn/s verdict") and "guarantees a false-alarm rate of 0.05" in line
    assert "2/2 = 1.00 [0.16, 1.00] effective" in line and "2/3 = 0.67" in line
    assert "1/10 = 0.10 [0.00, 0.45] held-out honest" in line


def test_an_attack_is_effective_by_the_success_its_fine_tune_added():
    """A trigger M already follows (held-out success 0.95, M's own 0.94) is no effective
    poisoning; one M does not follow is; a fine-tune of an earlier release (M's own success not
    recorded) is judged on its held-out success; the conclusions count them so."""
    from poisondetect.model_level.calibration import effective, success_gain
    from poisondetect.model_level.collection import verdict_lines

    det = pd.DataFrame(
        dict(
            dataset="d", arch="cnn", scenario="s", split=["attack"] * 4 + ["heldout"],
            attack_success_test=[0.95, 0.95, 0.3, 0.1, np.nan],
            attack_success_genuine=[0.94, 0.01, np.nan, 0.0, np.nan],
            verdict_flagged=[True, False, True, False, False], verdict_guaranteed_fpr=0.05,
        )
    )  # fmt: skip
    np.testing.assert_allclose(success_gain(det)[:4], [0.01, 0.94, 0.3, 0.1])
    assert effective(det, 0.2).tolist() == [False, True, True, False, False]
    (line,) = verdict_lines(det, 0.2)
    assert "1/2 = 0.50 [0.01, 0.99] effective" in line and "2/4 = 0.50" in line


def test_a_verdict_statistic_the_scores_lack_says_how_to_rescore():
    # scores written by a release before the statistic existed: a clear error, and the fix
    values = {f"honest_paper_r{i}": ("fit", 0.1 * i, 0.2 * i) for i in range(20)}
    with pytest.raises(PoisonDetectError, match=r"y:honest_z.*--forcerun score_detector"):
        verdict_scores(_table(values), ["x", "y:honest_z"], 0.05)


def test_audit_combines_as_the_bundle_says_and_older_bundles_take_the_smallest_p():
    from poisondetect.metrics import empirical_pvalue
    from poisondetect.model_level.audit import verdict

    rng = np.random.default_rng(4)
    honest = rng.normal(size=(39, 3))
    new = honest.mean(axis=0) + 1.8 * honest.std(axis=0, ddof=1)
    names = ["x", "y:s", "z:t"]
    keys = ["x:score", "y:s", "z:t"]
    cal = {
        "verdict": names,
        "fpr": 0.05,
        "thresholds": {k: {"honest_scores": honest[:, j].tolist()} for j, k in enumerate(keys)},
    }
    by_name = {
        v: {"score": new[j], "pvalue": empirical_pvalue(new[j], honest[:, j])}
        for j, v in enumerate(names)
    }
    older = verdict(by_name, cal)  # a bundle written before calibration.combine
    fisher = verdict(by_name, {**cal, "combine": "fisher"})
    assert older["combine"] == "smallest_p" and fisher["combine"] == "fisher"
    assert older["verdict_pvalue"] == verdict_pvalue(new, honest, "smallest_p")
    assert fisher["verdict_pvalue"] == verdict_pvalue(new, honest, "fisher")
    assert not older["flagged"] and fisher["flagged"]
    # what it is unusual on: the statistics at the configured rate (none alone would be flagged)
    unusual = [v for v in names if by_name[v]["pvalue"] <= 0.05]
    assert fisher["flagged_by"] == unusual and 0 < len(unusual) < len(names)


def test_the_config_refuses_an_unknown_combination():
    from poisondetect.config import validate_config

    cfg = {"model_level": {"calibration": {"combine": "average"}}}
    with pytest.raises(PoisonDetectError, match="combine"):
        validate_config(cfg)
