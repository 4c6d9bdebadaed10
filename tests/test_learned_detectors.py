"""The detectors that look for the attack itself: movement-invariant per-class profiles, and the
combined detector learned from the populations, which never sees an evaluated model; ROC over the
effective attacks; exact intervals of measured rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisondetect.detectors import registry
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.metrics import clopper_pearson
from poisondetect.model_level.collection import roc_table
from poisondetect.model_level.scoring import fit_and_score

RNG = np.random.default_rng(0)
LABELS = np.repeat(np.arange(5), 40)


def _record(name, errors=None, preds=None, acts=None, stats=None):
    return ModelRecord(
        name,
        LABELS,
        LABELS.copy() if preds is None else preds,
        activations=acts,
        errors=errors,
        statistics=stats,
    )


def test_ae_class_profile_ignores_how_far_a_model_moved_but_sees_one_class():
    base = RNG.uniform(0.5, 1.5, len(LABELS))
    genuine = _record("genuine", errors=base)
    det = registry.build("model", "ae_class_profile").fit(genuine)
    moved = _record("moved", errors=base * 5.0)  # every class 5x worse: an honest user moved far
    one = base.copy()
    one[LABELS == 3] *= 2.0  # one class 2x worse: an attack on class 3
    stats = det.statistics([genuine, moved, _record("attacked", errors=one)])
    assert stats["score"][0] == pytest.approx(1.0) and stats["score"][1] == pytest.approx(1.0)
    assert stats["score"][2] == pytest.approx(2.0)
    assert stats["peak"][1] == pytest.approx(5.0)  # the movement itself is in the peak


def test_drift_class_profile_sees_one_class_drift_not_a_uniform_one():
    acts = RNG.normal(size=(len(LABELS), 8)).astype(np.float32)
    det = registry.build("model", "drift_class_profile").fit(_record("genuine", acts=acts))
    uniform = acts + RNG.normal(scale=0.5, size=acts.shape).astype(np.float32)
    one = acts.copy()
    one[LABELS == 2] += 3.0
    s = det.score_samples([_record("u", acts=uniform), _record("one", acts=one)])
    assert s[0] < 1.5 < 5 < s[1]


def test_prediction_flow_sees_a_concentrated_flow_not_diffuse_changes():
    det = registry.build("model", "prediction_flow").fit(_record("genuine"))
    diffuse = LABELS.copy()
    flip = RNG.random(len(LABELS)) < 0.15  # 15 % of every class wanders to random classes
    diffuse[flip] = RNG.integers(0, 5, flip.sum())
    concentrated = LABELS.copy()
    concentrated[np.flatnonzero(LABELS == 1)[:20]] = 4  # half of class 1 sent to class 4
    s = det.score_samples([_record("d", preds=diffuse), _record("c", preds=concentrated)])
    assert s[1] > 3 * s[0]


def _stat_records():
    """A cell whose honest models have low statistics and attacked ones high (two features)."""
    records = {"genuine": _record("genuine", stats={"a": 0.0, "b": 0.0})}
    for r in range(6):
        records[f"honest_paper_r{r}"] = _record(
            f"honest_paper_r{r}", stats={"a": RNG.normal(), "b": RNG.normal()}
        )
    for r in range(4):
        records[f"flip_f50_e5_r{r}"] = _record(
            f"flip_f50_e5_r{r}", stats={"a": 3 + RNG.normal(), "b": RNG.normal()}
        )
    return records


def test_combined_detector_never_fits_on_an_evaluated_or_held_out_model():
    records = _stat_records()
    counts = {"paper": 3, "shadow": 2}  # 3 honest fitting replicates; 2 shadows per population
    det, df = fit_and_score("combined", {"C": 1.0}, records, counts)
    assert sorted(det.fitted_on_) == sorted(
        [
            "honest_paper_r0",
            "honest_paper_r1",
            "honest_paper_r2",
            "flip_f50_e5_r0",
            "flip_f50_e5_r1",
        ]
    )
    scores = df.set_index("model")["value"]
    # it learnt that "a" is high under attack: the evaluated attacks score above the held-out honest
    held = scores[[f"honest_paper_r{r}" for r in (3, 4, 5)]]
    assert scores[["flip_f50_e5_r2", "flip_f50_e5_r3"]].min() > held.max()
    assert det.weights_[det.features_.index("a")] > 0


def test_combined_detector_needs_shadow_attacks():
    from poisondetect.errors import PoisonDetectError

    with pytest.raises(PoisonDetectError, match="shadow_replicates"):
        fit_and_score("combined", {}, _stat_records(), {"paper": 3, "shadow": 0})


def test_effective_attack_auroc_keeps_only_the_attacks_that_worked():
    """A detector that misses exactly the ineffective attacks: AUROC 1 over the effective ones."""
    cell = {"dataset": "d", "arch": "cnn", "scenario": "standard", "seed": 0}
    rows, det_rows = [], []
    honest = [("honest_paper_r0", "fit", 0.1), ("honest_paper_r1", "heldout", 0.2)]
    honest += [("honest_paper_r2", "fit", 0.3), ("honest_paper_r3", "heldout", 0.4)]
    attacks = [("flip_f50_e5_r0", 0.9, 1.0), ("flip_f50_e5_r1", 0.8, 2.0)]
    attacks += [("flip_f50_e5_r2", 0.05, 0.15), ("flip_f50_e5_r3", 0.0, 0.05)]  # ineffective
    for m, split, v in honest:
        rows.append(dict(cell, model=m, split=split, role="honest", variant="paper", value=v))
        det_rows.append(dict(cell, model=m, attack_success_test=np.nan))
    for m, success, v in attacks:
        rows.append(
            dict(cell, model=m, split="attack", role="attack", attack="flip", fraction=0.5,
                 epochs=5, value=v)
        )  # fmt: skip
        det_rows.append(dict(cell, model=m, attack_success_test=success))
    scores = pd.DataFrame(rows).assign(detector="x", statistic="score", calibrated_threshold=0.35)
    roc, _ = roc_table(
        scores, pd.DataFrame(det_rows), fpr=0.05, bootstrap=50, level=0.95, min_success=0.2
    )
    r = roc[(roc["honest_variant"] == "all") & (roc["scope"] == "population")]
    r = r.set_index("attacks")
    assert r.loc["all", "auroc"] < 1.0 and r.loc["all", "n_attacked"] == 4
    assert r.loc["effective", "auroc"] == 1.0 and r.loc["effective", "n_attacked"] == 2
    assert r.loc["effective", "detection_rate"] == 1.0
    # held-out honest: 1 of 2 above the threshold, with its exact interval
    assert r.loc["all", "false_alarm_rate"] == 0.5
    lo, hi = clopper_pearson(1, 2)
    assert (r.loc["all", "false_alarm_lo"], r.loc["all", "false_alarm_hi"]) == (lo, hi)


def test_clopper_pearson_intervals():
    lo, hi = clopper_pearson(0, 6)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 6))  # "0 of 6": up to 0.46
    lo, hi = clopper_pearson(6, 6)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 6))
    lo, hi = clopper_pearson(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)
    assert all(np.isnan(clopper_pearson(0, 0)))
