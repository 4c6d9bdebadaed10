"""Results by attack family: roc.csv's per-family rows (every detector statistic, the family's
fractions and epochs pooled) and the combined detector's leave-one-family-out refits, which never
see a shadow attack of the family they are evaluated on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisondetect.model_level.collection import (
    LOFO,
    family_lines,
    leave_one_family_out,
    roc_table,
)

CELL = {"dataset": "d", "arch": "cnn", "scenario": "standard", "seed": 0}
# flip and badnets raise ae_mean; blend lowers it and raises weight_distance: unlike any other
SIGNAL = {"flip": (5.0, 0.0), "badnets": (5.0, 0.0), "blend": (-5.0, 2.0)}


def _cell():
    rng = np.random.default_rng(0)
    models = [(f"honest_paper_r{r}", "fit" if r < 8 else "heldout", "honest", None, (0, 0))
              for r in range(14)]  # fmt: skip
    for kind, sig in SIGNAL.items():
        models += [(f"{kind}_f50_e5_r{r}", "shadow" if r < 3 else "attack", "attack", kind, sig)
                   for r in range(8)]  # fmt: skip
    rows, det = [], []
    for m, split, role, kind, (a, w) in models:
        spec = dict(CELL, model=m, split=split, role=role, attack=kind,
                    variant="paper" if role == "honest" else None,
                    fraction=0.5 if kind else np.nan, epochs=5 if kind else np.nan)  # fmt: skip
        for d, mu in (("ae_mean", a), ("weight_distance", w)):
            v = mu + rng.normal(0, 0.5)
            rows.append(
                dict(spec, detector=d, statistic="score", value=v, calibrated_threshold=1.0)
            )
        det.append(dict(CELL, model=m, attack_success_test=0.9 if kind else np.nan))
    return pd.DataFrame(rows), pd.DataFrame(det)


def test_family_rows_give_each_detector_per_family():
    scores, det = _cell()
    roc, _ = roc_table(scores, det, fpr=0.1, bootstrap=50, level=0.95, min_success=0.2)
    fam = roc[(roc["scope"] == "family") & (roc["attacks"] == "effective")]
    a = fam.set_index(["detector", "attack"])["auroc"]
    assert a["ae_mean", "flip"] == 1.0 and a["weight_distance", "blend"] == 1.0
    assert a["ae_mean", "blend"] < 0.9
    assert (fam["n_attacked"] == 5).all() and (fam["n_honest"] == 14).all()
    assert "combined:lofo" not in set(roc["detector"])  # no combined block: no refits


def test_leave_one_family_out_never_sees_the_left_out_family(monkeypatch):
    from poisondetect.detectors.combined import Combined

    seen, fit = [], Combined.fit

    def spy(self, genuine, honest=(), shadow=()):
        seen.append({r.name.split("_")[0] for r in shadow})
        return fit(self, genuine, honest, shadow)

    monkeypatch.setattr(Combined, "fit", spy)
    scores, det = _cell()
    lofo = leave_one_family_out(scores, combined={"C": 1.0}, fpr=0.1)
    # every refit learns from the shadows of exactly two of the three families
    assert {frozenset(s) for s in seen} == {frozenset(set(SIGNAL) - {f}) for f in SIGNAL}
    assert set(lofo["statistic"]) == {LOFO} and set(lofo["attack"]) == set(SIGNAL)
    assert not (lofo["split"] == "shadow").any()  # shadows fit, are never scored
    for fam, g in lofo.groupby("attack"):
        assert set(g.loc[g["role"] == "attack", "model"].str.split("_").str[0]) == {fam}
        assert g["value"].notna().all() and g["role"].eq("honest").sum() == 14
    roc, _ = roc_table(
        scores, det, fpr=0.1, bootstrap=50, level=0.95, min_success=0.2, combined={"C": 1.0}
    )
    r = roc[(roc["detector"] == "combined:lofo") & (roc["attacks"] == "effective")]
    a = r.set_index("attack")["auroc"]
    # flip is learned from badnets' shadows and badnets from flip's; blend, which resembles no
    # other family, is missed by the fit that never saw it
    assert min(a["flip"], a["badnets"]) > 0.8
    assert a["blend"] < 0.5
    assert (r["scope"] == "family").all() and (r["n_honest"] == 14).all()
    lines = family_lines(roc)
    assert len(lines) == 3 and all("combined:lofo AUROC" in line for line in lines)
    assert any(line.startswith("d/cnn/standard family blend: effective: best weight_distance")
               for line in lines)  # fmt: skip


def test_no_refit_without_shadows_or_combined():
    scores, _ = _cell()
    assert leave_one_family_out(scores, combined=None, fpr=0.1).empty
    no_shadow = scores[scores["split"] != "shadow"]
    assert leave_one_family_out(no_shadow, combined={}, fpr=0.1).empty


@pytest.mark.parametrize("frac", [0.125])
def test_summary_matches_attacks_by_population_name(frac):
    """A sampled recipe's trained epochs differ from its population's: the conclusions still
    count its models."""
    from poisondetect.model_level.collection import summary_lines

    scores, det = _cell()
    roc, _ = roc_table(scores, det, fpr=0.1, bootstrap=20, level=0.95, min_success=0.2)
    d = det.merge(scores.drop_duplicates("model")[["model", "split", "role", "attack", "fraction"]])
    d["epochs"] = 11  # what the models trained, not the names' e5
    d["verdict_flagged"] = False
    lines = summary_lines(roc, d)
    assert len(lines) == 3 and all("5 of 5 effective" in line for line in lines)
