"""Stages of the sample-level workflow (Razmi & Xiong, CAE / CAE+); each is called by one script.

1. ``build_rounds``: class-balanced train / validation / test points for every periodic-update round.
2. ``poison_all``: the attack's poisons added to every round's training set (cached, so that a
   change of detector never recomputes an attack), with the undefended and clean SVM accuracies.
3. ``fit_filter``: one detector *family* fitted on the first rounds' pooled training data
   (contaminated or clean), then used to filter each evaluation round before the SVM is retrained.
   ``cae`` fits an RAE and a CAE once and reports RAE, CAE and CAE+; ``magnet`` reports MagNet and
   MagNet + reformer; ``od`` the centroid baseline.
4. ``collect``: the tidy ``filtering.csv``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

FAMILIES = {
    "cae": ("rae", "cae", "cae_plus"),
    "od": ("od",),
    "magnet": ("magnet", "magnet_reformer"),
}
DECISIONS = ("gmm", "topk")


def family_of(detector: str) -> str:
    for fam, members in FAMILIES.items():
        if detector in members:
            return fam
    raise PoisonDetectError(f"unknown sample-level detector {detector!r}")


def families(detectors: list[str]) -> list[str]:
    """The detector families needed for ``detectors``, in a fixed order."""
    wanted = {family_of(d) for d in detectors}
    return [f for f in FAMILIES if f in wanted]


def svm_params(task: dict) -> dict:
    """scikit-learn SVC keyword arguments of a task (gamma only for the RBF kernel)."""
    params = {"kernel": task["kernel"], "C": task["C"]}
    if task["kernel"] == "rbf":
        params["gamma"] = task["gamma"]
    return params


def svm_accuracy(x_tr, y_tr, x_te, y_te, params: dict) -> float:
    """Test accuracy of an SVC retrained on (x_tr, y_tr); a one-class training set predicts that
    class (filtering may remove every point of a class)."""
    from sklearn.svm import SVC

    if len(np.unique(y_tr)) < 2:
        pred = np.full(len(y_te), y_tr[0] if len(y_tr) else 0)
    else:
        pred = SVC(**params).fit(x_tr, y_tr).predict(x_te)
    return float((pred == y_te).mean())


def _seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


# -- stages -----------------------------------------------------------------------------------
def build_rounds(data: str, out: str, *, classes: list[int], rounds: dict, seed: int) -> None:
    from poisondetect.data import load_prepared
    from poisondetect.rounds import make_rounds

    ds = load_prepared(data)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    r = make_rounds(
        flat(ds.x_train),
        ds.y_train,
        flat(ds.x_test),
        ds.y_test,
        classes=tuple(classes),
        n_rounds=rounds["n_rounds"],
        n_train=rounds["n_train"],
        n_val=rounds["n_val"],
        n_test=rounds["n_test"],
        seed=seed,
    )
    r.save(out)
    log.info(
        "%d rounds of %d train / %d val / %d test points, classes %s of %s",
        rounds["n_rounds"],
        rounds["n_train"],
        rounds["n_val"],
        rounds["n_test"],
        classes,
        ds.name,
    )


def poison_all(
    rounds: str, out: str, *, attack: str, n_poison: int, svm: dict, optimal: dict, seed: int
) -> None:
    """Poison every round's training set; store it with the undefended and clean accuracies."""
    from poisondetect.attacks.svm import poison
    from poisondetect.rounds import Rounds

    r = Rounds.load(rounds)
    xs, ys, masks, kinds, acc_poisoned, acc_clean = [], [], [], [], [], []
    t0 = time.perf_counter()
    for i in range(r.n_rounds):
        x, y, m, k = poison(
            attack,
            r.x_train[i],
            r.y_train[i],
            r.x_val[i],
            r.y_val[i],
            n_poison,
            svm,
            seed=_seed(seed, i),
            **optimal,
        )
        xs.append(x), ys.append(y), masks.append(m), kinds.append(k)
        acc_poisoned.append(svm_accuracy(x, y, r.x_test[i], r.y_test[i], svm))
        acc_clean.append(svm_accuracy(r.x_train[i], r.y_train[i], r.x_test[i], r.y_test[i], svm))
        if (i + 1) % max(1, r.n_rounds // 10) == 0 or i + 1 == r.n_rounds:
            log.info(
                "round %d/%d poisoned (%s, %d poisons): SVM accuracy %.3f (clean %.3f), %.1fs",
                i + 1,
                r.n_rounds,
                attack,
                n_poison,
                acc_poisoned[-1],
                acc_clean[-1],
                time.perf_counter() - t0,
            )
    with atomic_path(out) as tmp:
        np.savez(
            tmp,
            x=np.stack(xs),
            y=np.stack(ys),
            is_poison=np.stack(masks),
            poison_kind=np.stack(kinds),
            acc_undefended=np.array(acc_poisoned),
            acc_clean=np.array(acc_clean),
            x_test=r.x_test,
            y_test=r.y_test,
            x_clean=r.x_train,
            y_clean=r.y_train,
        )


def load_poisoned(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError as e:
        raise PoisonDetectError(f"{path} not found") from e
    except Exception as e:  # truncated zip, bad header
        raise PoisonDetectError(
            f"{path} is corrupt or incomplete ({e}); delete it and rerun the poison_rounds job"
        ) from e


def _make_family(family: str, settings: dict, *, alpha: float, arch: str, seed: int, device: str):
    from poisondetect.detectors.baselines import OD, MagNet
    from poisondetect.detectors.cae import CAEPlus

    if family == "od":
        return OD(seed=seed, device=device)
    if family not in FAMILIES:
        raise PoisonDetectError(f"unknown detector family {family!r}; known: {', '.join(FAMILIES)}")
    ae = settings["autoencoders"]
    shared = dict(
        filters=ae["filters"],
        batch_size=ae["batch_size"],
        lr=ae["lr"],
        val_fraction=ae["val_fraction"],
        seed=seed,
        device=device,
    )
    if family == "cae":
        return CAEPlus(
            alpha,
            arch=arch,
            hidden=ae["hidden"],
            latent=ae["latent"],
            head_units=settings["cae"]["head_units"],
            dropout_in=settings["cae"]["dropout_in"],
            dropout_hidden=settings["cae"]["dropout_hidden"],
            rae_epochs=settings["rae"]["epochs"],
            cae_epochs=settings["cae"]["epochs"],
            rae_patience=settings["rae"]["patience"],
            cae_patience=settings["cae"]["patience"],
            **shared,
        )
    archs = ("dense", "dense") if arch == "dense" else ("conv_avgpool", "conv_nopool")
    m = settings["magnet"]
    return MagNet(
        archs=archs, noise=m["noise"], epochs=m["epochs"], patience=m["patience"], **shared
    )


def _family_scores(family: str, det, x: np.ndarray, y: np.ndarray, alpha: float, seed: int):
    """{detector: (score, gmm flags, extra columns)} for one round."""
    from poisondetect.detectors.cae import combine
    from poisondetect.detectors.decision import gmm_decision

    if family == "cae":
        re, ce = det.score_terms(x, y)
        out = {}
        for name, s in (
            ("rae", re),
            ("cae", det.cae.score_samples(x, y)),
            ("cae_plus", combine(re, ce, alpha)),
        ):
            out[name] = (s, gmm_decision(s, seed=seed), {"re": re, "ce": ce})
        return out
    if family == "magnet":
        s, flags = det.score_samples(x), det.predict(x)
        return {"magnet": (s, flags, {}), "magnet_reformer": (s, flags, {})}
    s = det.score_samples(x, y)
    return {"od": (s, gmm_decision(s, seed=seed), {})}


def fit_filter(
    poisoned: str,
    scores_out: str,
    summary_out: str,
    *,
    family: str,
    train_on: str,
    detectors: list[str],
    n_detector_rounds: int,
    alpha: float,
    settings: dict,
    arch: str,
    svm: dict,
    seed: int,
    device: str,
    cell: dict,
) -> None:
    """Fit one detector family on the pooled first rounds; filter and retrain on the others."""
    from poisondetect.detectors.decision import top_k_decision
    from poisondetect.metrics import filter_metrics

    P = load_poisoned(poisoned)
    nd, n_rounds = n_detector_rounds, len(P["x"])
    if nd >= n_rounds:
        raise PoisonDetectError(
            f"n_detector_rounds = {nd} leaves no evaluation round of {n_rounds}"
        )
    if train_on == "contaminated":
        x_fit, y_fit = P["x"][:nd], P["y"][:nd]
    else:
        x_fit, y_fit = P["x_clean"][:nd], P["y_clean"][:nd]
    x_fit, y_fit = x_fit.reshape(-1, x_fit.shape[-1]), y_fit.reshape(-1)
    t0 = time.perf_counter()
    det = _make_family(family, settings, alpha=alpha, arch=arch, seed=seed, device=device)
    det.fit(x_fit, y_fit)
    fit_seconds = time.perf_counter() - t0
    log.info("%s fitted on %d %s points in %.1fs", family, len(y_fit), train_on, fit_seconds)
    wanted = [d for d in FAMILIES[family] if d in detectors]
    score_rows, metric_rows = [], []
    for i in range(nd, n_rounds):
        x, y, mask, kind = P["x"][i], P["y"][i], P["is_poison"][i], P["poison_kind"][i]
        per_det = _family_scores(family, det, x, y, alpha, seed)
        for name in wanted:
            s, gmm_flags, extra = per_det[name]
            score_rows.append(
                pd.DataFrame(
                    {
                        "round": i,
                        "point": np.arange(len(y)),
                        "detector": name,
                        "label": y,
                        "is_poison": mask,
                        "poison_kind": kind,
                        "score": s,
                        **extra,
                    }
                )
            )
            for decision, flags in (
                ("gmm", gmm_flags),
                ("topk", top_k_decision(s, int(mask.sum()))),
            ):
                keep = ~flags
                x_keep = det.reform(x[keep]) if name == "magnet_reformer" else x[keep]
                acc = svm_accuracy(x_keep, y[keep], P["x_test"][i], P["y_test"][i], svm)
                metric_rows.append(
                    {
                        "detector": name,
                        "decision": decision,
                        "round": i,
                        **filter_metrics(mask, flags, s),
                        "svm_accuracy": acc,
                    }
                )
    with atomic_path(scores_out) as tmp:
        pd.concat(score_rows, ignore_index=True).to_parquet(tmp, index=False)
    m = pd.DataFrame(metric_rows)
    eval_rounds = slice(nd, n_rounds)
    summary = []
    for (name, decision), g in m.groupby(["detector", "decision"], sort=False):
        summary.append(
            {
                **cell,
                "detector": name,
                "decision": decision,
                "train_on": train_on,
                "precision": g["precision"].mean(),
                "recall": g["recall"].mean(),
                "f1": g["f1"].mean(),
                "auroc": g["auroc"].mean(),
                "svm_accuracy": g["svm_accuracy"].mean(),
                "undefended_accuracy": float(P["acc_undefended"][eval_rounds].mean()),
                "clean_accuracy": float(P["acc_clean"][eval_rounds].mean()),
                "n_eval_rounds": n_rounds - nd,
                "fit_seconds": fit_seconds,
            }
        )
        if decision == "gmm":
            log.info(
                "%-16s F1 %.3f  AUROC %.3f  SVM accuracy %.3f (undefended %.3f, clean %.3f)",
                name,
                summary[-1]["f1"],
                summary[-1]["auroc"],
                summary[-1]["svm_accuracy"],
                summary[-1]["undefended_accuracy"],
                summary[-1]["clean_accuracy"],
            )
    write_json(summary_out, summary)


FILTERING_COLUMNS = [
    "task",
    "attack",
    "n_poison",
    "poison_rate",
    "detector",
    "decision",
    "train_on",
    "seed",
    "precision",
    "recall",
    "f1",
    "auroc",
    "svm_accuracy",
    "undefended_accuracy",
    "clean_accuracy",
    "n_eval_rounds",
    "fit_seconds",
]


def collect(summaries: list[str], out: str) -> pd.DataFrame:
    """The tidy filtering table, with one no-defence row per (task, attack, poisons, seed)."""
    rows = [r for p in summaries for r in read_json(p)]
    df = pd.DataFrame(rows)
    keys = ["task", "attack", "n_poison", "poison_rate", "seed"]
    none = df.drop_duplicates(keys)[
        keys + ["undefended_accuracy", "clean_accuracy", "n_eval_rounds"]
    ].copy()
    none["detector"], none["decision"], none["train_on"] = "none", "none", "none"
    none["svm_accuracy"] = none["undefended_accuracy"]
    df = pd.concat([df, none], ignore_index=True)
    df = (
        df.reindex(columns=FILTERING_COLUMNS)
        .sort_values(["task", "attack", "n_poison", "seed", "detector", "decision", "train_on"])
        .reset_index(drop=True)
    )
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
