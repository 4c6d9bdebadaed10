"""The sample-level part's data (Razmi & Xiong): the periodic-update rounds and their poisons.

1. ``build_rounds``: class-balanced train / validation / test points for every round
   (``poisondetect.rounds``).
2. ``poison_all``: the attack's poisons added to every round's training set (cached, so that a
   change of detector never recomputes an attack), with the undefended and clean SVM accuracies.

``load_poisoned`` reads that cache back and ``fitting_set`` is the pooled first rounds the
detectors and their networks learn from (``sample_level.filters``, ``sample_level.networks``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path
from poisondetect.names import TRAIN_ON
from poisondetect.seeds import derive_seed

log = logging.getLogger(__name__)


def svm_accuracy(x_tr, y_tr, x_te, y_te, params: dict) -> float:
    """Test accuracy of an SVC retrained on (x_tr, y_tr); a one-class training set predicts that
    class (filtering may remove every point of a class)."""
    from sklearn.svm import SVC

    if len(np.unique(y_tr)) < 2:
        pred = np.full(len(y_te), y_tr[0] if len(y_tr) else 0)
    else:
        pred = SVC(**params).fit(x_tr, y_tr).predict(x_te)
    return float((pred == y_te).mean())


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
            seed=derive_seed(seed, i),
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


def fitting_set(P: dict, train_on: str, nd: int) -> tuple[np.ndarray, np.ndarray]:
    """The pooled points of the first ``nd`` rounds the detectors learn from."""
    if nd >= len(P["x"]):
        raise PoisonDetectError(
            f"n_detector_rounds = {nd} leaves no evaluation round of {len(P['x'])}"
        )
    if train_on not in TRAIN_ON:
        raise PoisonDetectError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    key = "" if train_on == "contaminated" else "_clean"
    x, y = P[f"x{key}"][:nd], P[f"y{key}"][:nd]
    return x.reshape(-1, x.shape[-1]), y.reshape(-1)
