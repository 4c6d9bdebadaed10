"""Model-level detectors: each scores a suspicious model against the genuine model M.

Every detector follows the protocol of ``poisondetect.detectors.base``: parameters stored as given,
``fit(genuine, honest=())`` learns from M and, where a detector needs it, from the honest
fine-tunes set aside for fitting (and ``reference=``, the reference honest fine-tune, or
``shadow=``, shadow attacks, for the detectors whose ``uses_reference`` / ``uses_shadow`` say
so); ``score_samples(records)`` returns one score per suspicious model (higher = more
suspicious) and ``sub_scores(records)`` the named extra statistics. Inputs are ``ModelRecord``s
built from what the workflow already wrote (activation dumps, checkpoints, the auto-encoder's
per-image errors, other detectors' statistics); nothing here imports torch.

Detectors (config names in the registry):

- ``ae_mean``: the paper's statistic, the mean auto-encoder error over the trigger set, and the
  paper's rule as the statistic ``paper_margin`` (mean error minus Tr = mean + std of the reference
  honest fine-tune's per-image errors; positive = the paper says poisoned).
- ``ae_class``: the auto-encoder's mean error per class of the trigger set, as a shift from the
  honest population in units of its spread; the score is the largest shift over the classes.
- ``activation_drift``: paired per-image distance between the suspicious model's and M's
  penultimate activations (relative to M's activation norm); overall, and the worst class.
- ``weight_distance``: relative parameter distance to M; also the last layer's alone.
- ``accuracy_drop``: M's trigger-set accuracy minus the suspicious model's.
- ``prediction_change``: share of trigger images whose predicted class differs from M's; overall
  and for the worst class.
- ``mahalanobis``: mean Mahalanobis distance of the suspicious model's activations to M's
  class-conditional means under M's shared (Ledoit-Wolf) covariance (Lee et al., 2018), minus M's
  own; also the worst class.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from poisondetect.detectors.base import Detector
from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import stratified_subset

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0  # a slow detector (trigger inversion) logs its progress this often


class Progress:
    """A loop over models that says how far it is, at most every ``PROGRESS_SECONDS``:
    ``<name>: i of n models scored (s per model<extra>)``; a fast loop stays quiet."""

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.start = self.last = time.perf_counter()

    def step(self, i: int, extra: str = "") -> None:
        """Model ``i`` (1-based) is done; ``extra`` is appended to the line."""
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS:
            log.info("%s: %d of %d models scored (%.1f s per model%s)",
                     self.name, i, self.total, (now - self.start) / i, extra)  # fmt: skip
            self.last = now


@dataclass
class ModelRecord:
    """What the detectors see of one model, on the trigger set (rows in the same image order for
    every model of a cell)."""

    name: str
    labels: np.ndarray  # (N,) true labels of the trigger images
    preds: np.ndarray  # (N,) the model's predicted classes
    activations: np.ndarray | None = None  # (N, d) penultimate activations
    errors: np.ndarray | None = None  # (N,) auto-encoder reconstruction errors
    weights: dict[str, np.ndarray] | None = None  # parameter name -> array
    statistics: dict[str, float] | None = None  # other detectors' statistics ("det:stat" -> value)
    network: object | None = None  # the model itself: torch nn.Module in eval mode (or a loader)
    images: np.ndarray | None = None  # (N, C, H, W) float32 in [0, 1]: the trigger images in the
    # order of labels (the same array for every record of a cell)

    def need(self, field: str) -> np.ndarray | dict:
        """A field the detector needs; a ``network`` given as a loader (a function of no argument)
        is loaded now and not kept, so a cell's networks are in memory one at a time."""
        value = getattr(self, field)
        if value is None:
            raise PoisonDetectError(f"model {self.name!r}: the detector needs its {field}")
        return (
            value() if field == "network" and callable(value) and not _is_module(value) else value
        )


def _is_module(value) -> bool:
    """A torch module (callable too) rather than a loader of one; torch is not imported here."""
    return hasattr(value, "state_dict")


def _same_images(genuine: ModelRecord, rec: ModelRecord) -> None:
    if len(rec.labels) != len(genuine.labels) or not np.array_equal(rec.labels, genuine.labels):
        raise PoisonDetectError(
            f"model {rec.name!r} was evaluated on other trigger images than the genuine model "
            f"({len(rec.labels)} vs {len(genuine.labels)} rows); rerun its activation dump"
        )


def paired_activations(rec: ModelRecord, genuine: np.ndarray) -> np.ndarray:
    """A record's activations, image by image beside the genuine model's (same shape, float32)."""
    a = np.asarray(rec.need("activations"), dtype=np.float32)
    if a.shape != genuine.shape:
        raise PoisonDetectError(
            f"model {rec.name!r}: activations of shape {a.shape}, the genuine model's are "
            f"{genuine.shape} (another architecture?)"
        )
    return a


def class_means(values: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the rows of each class (one entry per class in ``classes``)."""
    return np.array([values[labels == c].mean() for c in classes], dtype=np.float64)


def record_images(rec: ModelRecord) -> np.ndarray:
    """A record's trigger images, checked: shaped (N, C, H, W) with one row per label, finite,
    in [0, 1] (as the models see them)."""
    x = np.asarray(rec.need("images"))
    if x.ndim != 4 or len(x) != len(rec.labels):
        raise PoisonDetectError(
            f"model {rec.name!r}: images must be shaped (N, C, H, W) with one row per trigger "
            f"label ({len(rec.labels)}), got shape {x.shape}"
        )
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise PoisonDetectError(
            f"model {rec.name!r}: trigger images must be finite and in [0, 1] (as the models "
            "see them); pass the prepared data set's images"
        )
    return x


def record_image_subset(
    rec: ModelRecord, n_images: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded stratified choice of ``n_images`` of a record's trigger images (all if fewer),
    float32, and their labels: the same rows for every record of a cell."""
    x = record_images(rec)
    idx = stratified_subset(rec.labels, int(n_images), seed)
    return x[idx].astype(np.float32), np.asarray(rec.labels)[idx]


def record_network(rec: ModelRecord):
    """A record's network, checked to be a torch module (a loader is loaded)."""
    from torch import nn

    net = rec.need("network")
    if not isinstance(net, nn.Module):
        raise PoisonDetectError(
            f"model {rec.name!r}: network must be a torch nn.Module, got {type(net).__name__}"
        )
    return net


class ModelDetector(Detector):
    """Shared checks of the model-level detectors: ``fit`` stores the trigger set's labels and
    classes; ``score_samples`` / ``sub_scores`` check every record against them."""

    uses_honest = False  # True: fit learns from the honest fine-tunes (calibration then holds
    # each of them out of the fit that scores it)
    uses_reference = False  # True: fit takes the reference honest fine-tune (``reference=``)
    uses_shadow = False  # True: fit takes the shadow attacks (``shadow=``): attacked models that
    # are never evaluated, on other class pairs than the evaluated ones
    needs: tuple[str, ...] = ()  # the ModelRecord fields this detector reads
    costly = False  # True: seconds or more per model; the stage keeps each model's statistics
    # (keyed by everything they depend on) so a rerun scores only the models that changed

    def _fit_common(self, genuine: ModelRecord) -> None:
        self.labels_ = np.asarray(genuine.labels)
        self.classes_ = np.unique(self.labels_)

    def _fit_honest_profiles(
        self, honest: Sequence[ModelRecord], profile: Callable[[ModelRecord], np.ndarray]
    ) -> None:
        """Keep the honest fitting replicates' per-class profiles, ``profile(h)`` of each (an
        ``honest_z`` statistic: ``honest_profiles_``, rows named by ``honest_models_``); their
        names are checked before any profile is computed (a costly one takes seconds), and a
        slow loop says how far it is."""
        who = getattr(self, "config_name", type(self).__name__)
        names = [h.name for h in honest]
        if len(set(names)) != len(names):
            raise PoisonDetectError(f"{who}: two honest replicates share a name")
        profiles, progress = [], Progress(f"{who} (honest replicates)", len(honest))
        for i, h in enumerate(honest, 1):
            profiles.append(profile(h))
            progress.step(i, f", last {h.name}")
        if len({len(p) for p in profiles}) > 1:
            raise PoisonDetectError(
                f"{who}: the honest replicates have different numbers of classes"
            )
        self.honest_models_ = names
        self.honest_profiles_ = np.vstack(profiles) if len(profiles) else np.zeros((0, 0))

    def _honest_deviation(
        self, rec: ModelRecord, profile: np.ndarray, floor: float, flat: float = 0.0
    ) -> np.ndarray:
        """How far each entry of a model's profile lies from the same entry's mean over the
        honest fitting replicates, in units of their standard deviation for it (floored at
        ``floor``): ``(profile - mean) / max(sd, floor)``. A fitting replicate is compared with
        the others (left out by its name), so its deviation is out of sample without refitting.
        With fewer than two honest replicates the mean is the one replicate's profile, or with
        none ``flat`` everywhere, and the spread the floor."""
        if not hasattr(self, "honest_profiles_"):
            raise PoisonDetectError(
                f"{type(self).__name__} was fitted without honest profiles (a detector state "
                "saved by an earlier release?): rerun its scoring job to refit it"
            )
        ref = np.asarray(self.honest_profiles_, dtype=np.float64)
        names = list(self.honest_models_)
        if rec.name in names:  # a fitting replicate: against the others
            ref = np.delete(ref, names.index(rec.name), axis=0)
        if len(ref) and ref.shape[1] != len(profile):
            raise PoisonDetectError(
                f"model {rec.name!r}: {len(profile)} per-class values, the honest replicates had "
                f"{ref.shape[1]} (another trigger set or number of classes?)"
            )
        if len(ref) >= 2:
            center, spread = ref.mean(0), ref.std(0, ddof=1)
        else:
            center, spread = (ref[0] if len(ref) else np.full(len(profile), flat)), 0.0
        return (profile - center) / np.maximum(spread, floor)

    def _check(self, records: Sequence[ModelRecord]) -> None:
        if not hasattr(self, "labels_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        probe = ModelRecord("genuine", self.labels_, self.labels_)
        for rec in records:
            _same_images(probe, rec)

    def score_samples(self, records: Sequence[ModelRecord]) -> np.ndarray:
        return self._statistics(records)["score"]

    def sub_scores(self, records: Sequence[ModelRecord]) -> dict[str, np.ndarray]:
        stats = self._statistics(records)
        return {k: v for k, v in stats.items() if k != "score"}

    def statistics(self, records: Sequence[ModelRecord]) -> dict[str, np.ndarray]:
        """The main score (key ``score``) and the sub-scores, one value per record."""
        return self._statistics(records)

    def _statistics(self, records: Sequence[ModelRecord]) -> dict[str, np.ndarray]:
        self._check(records)
        rows = []
        progress = Progress(type(self).__name__, len(records))
        for i, rec in enumerate(records, 1):
            rows.append(self._one(rec))
            progress.step(i, f", last {rec.name}")
        keys = rows[0].keys() if rows else ["score"]
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}

    def _one(self, rec: ModelRecord) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class KeptSearch:
    """A per-model search of a costly detector (a second or more per model: max_margin's
    margins, neuron_stimulation's elevations), done once per record object and fit (an honest
    replicate searched at ``fit`` is not searched again when scored) and, once a scoring stage
    has called ``keep_searches``, kept on disk (one JSON per model, keyed by the search's
    parameters, ``_search_key()`` and the model's digest), so that a rerun after the attacks
    changed searches no honest model again. The class names its folder (``search_folder``) and
    defines ``_search(rec)``, which returns a 1-D array of finite numbers."""

    search_folder = "searches"

    def keep_searches(self, cache: str, digest: Callable[[ModelRecord], str]) -> None:
        """Keep each model's search in ``cache``/``search_folder`` and read it back instead of
        searching again. Not a parameter and not fitted state: ``clone`` drops it."""
        self._store = (os.path.join(cache, self.search_folder), digest)

    def _search_key(self) -> dict:
        """What a kept search depends on besides the model (default: the parameters but the
        device)."""
        return {"search": {k: v for k, v in self.get_params().items() if k != "device"}}

    def _search(self, rec: ModelRecord) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _searched(self, rec: ModelRecord) -> np.ndarray:
        """``_search(rec)`` once per record object and fit, through the store of
        ``keep_searches`` where there is one."""
        seen = self.__dict__.setdefault("_seen", {})
        if id(rec) in seen and seen[id(rec)][0] is rec:
            return seen[id(rec)][1]
        store = getattr(self, "_store", None)
        if store is None:
            values = self._search(rec)
        else:
            from poisondetect.io import kept_json

            folder, digest = store
            values, _ = kept_json(
                os.path.join(folder, f"{rec.name}.json"),
                {**self._search_key(), "model": digest(rec)},
                lambda: self._search(rec),
                lambda v: [float(x) for x in v],
                _read_search,
            )
        seen[id(rec)] = (rec, values)
        return values


def _read_search(entry) -> np.ndarray:
    """A search read back from the store; anything but a non-empty list of finite numbers raises
    ValueError (the model is then searched again)."""
    v = np.asarray(entry, dtype=np.float64)
    if v.ndim != 1 or not len(v) or not np.isfinite(v).all():
        raise ValueError("not a list of finite numbers")
    return v


class AEMean(ModelDetector):
    """The paper's detector: mean auto-encoder error over the trigger set (``score``), and the
    paper's rule as a statistic of its own: ``paper_margin`` = score - Tr, with Tr = mean + std of
    the reference honest fine-tune's per-image errors (Eq. 4); the paper's verdict is
    ``paper_margin > 0``."""

    needs = ("errors",)
    uses_reference = True

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
        reference: ModelRecord | None = None,
    ) -> AEMean:
        self._fit_common(genuine)
        if reference is None:
            raise PoisonDetectError(
                "ae_mean: the paper's threshold Tr comes from a reference honest fine-tune, and "
                "none was given; set model_level.finetune.reference_variant to a configured "
                "honest variant"
            )
        e = np.asarray(reference.need("errors"), dtype=np.float64)
        self.paper_threshold_ = float(e.mean() + e.std())
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        score = float(np.mean(rec.need("errors")))
        return {"score": score, "paper_margin": score - self.paper_threshold_}


class AEClass(ModelDetector):
    """Auto-encoder errors per class: the largest shift of a class's mean error from the honest
    population, in units of that class's spread (honest spread and trigger-set noise)."""

    uses_honest = True
    needs = ("errors",)

    def __init__(self, min_spread: float = 1e-6):
        self.min_spread = min_spread

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> AEClass:
        if not self.min_spread > 0:
            raise PoisonDetectError("ae_class: min_spread must be > 0")
        self._fit_common(genuine)
        e_m = np.asarray(genuine.need("errors"), dtype=np.float64)
        # trigger-set noise: the standard error of each class's mean error in M
        noise = np.array(
            [
                e_m[self.labels_ == c].std() / np.sqrt((self.labels_ == c).sum())
                for c in self.classes_
            ]
        )
        # the honest population's class means (M's own when no honest fine-tune is given)
        pop = np.vstack(
            [class_means(np.asarray(h.need("errors")), self.labels_, self.classes_) for h in honest]
            or [class_means(e_m, self.labels_, self.classes_)]
        )
        self.center_ = pop.mean(0)
        spread = pop.std(0, ddof=1) if len(pop) > 1 else np.zeros_like(self.center_)
        self.spread_ = np.maximum(np.sqrt(spread**2 + noise**2), self.min_spread)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        z = class_means(np.asarray(rec.need("errors")), self.labels_, self.classes_) - self.center_
        z = z / self.spread_
        return {"score": float(z.max())}


class ActivationDrift(ModelDetector):
    """Paired distance of the suspicious model's activations to M's, image by image, relative to
    the mean norm of M's activations; overall and for the worst class."""

    needs = ("activations",)

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> ActivationDrift:
        self._fit_common(genuine)
        self.activations_ = np.asarray(genuine.need("activations"), dtype=np.float32)
        self.scale_ = max(float(np.linalg.norm(self.activations_, axis=1).mean()), 1e-12)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        a = paired_activations(rec, self.activations_)
        d = np.linalg.norm(a - self.activations_, axis=1).astype(np.float64) / self.scale_
        return {
            "score": float(d.mean()),
            "worst_class": float(class_means(d, self.labels_, self.classes_).max()),
        }


class WeightDistance(ModelDetector):
    """Relative parameter distance ||theta - theta_M|| / ||theta_M||; also the last layer's."""

    needs = ("weights",)

    def __init__(self, last_layer_prefix: str = "classifier."):
        self.last_layer_prefix = last_layer_prefix

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> WeightDistance:
        self._fit_common(genuine)
        w = genuine.need("weights")
        self.names_ = sorted(k for k, v in w.items() if np.issubdtype(v.dtype, np.floating))
        self.weights_ = self._flat(w, self.names_)
        self.last_ = np.array([k.startswith(self.last_layer_prefix) for k in self.names_])
        self.sizes_ = np.array([w[k].size for k in self.names_])
        return self

    @staticmethod
    def _flat(w: dict, names: list[str]) -> np.ndarray:
        return np.concatenate([np.asarray(w[k], dtype=np.float64).ravel() for k in names])

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        w = rec.need("weights")
        if any(k not in w or w[k].size != n for k, n in zip(self.names_, self.sizes_, strict=True)):
            raise PoisonDetectError(
                f"model {rec.name!r}: its parameters do not match the genuine model's "
                "(another architecture?)"
            )
        diff = self._flat(w, self.names_) - self.weights_
        in_last = np.repeat(self.last_, self.sizes_)
        ref_last = max(np.linalg.norm(self.weights_[in_last]), 1e-12)
        return {
            "score": float(np.linalg.norm(diff) / max(np.linalg.norm(self.weights_), 1e-12)),
            "last_layer": float(np.linalg.norm(diff[in_last]) / ref_last),
        }


class AccuracyDrop(ModelDetector):
    """M's accuracy on the trigger set minus the suspicious model's."""

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> AccuracyDrop:
        self._fit_common(genuine)
        self.accuracy_ = float(np.mean(genuine.preds == self.labels_))
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        return {"score": self.accuracy_ - float(np.mean(rec.preds == self.labels_))}


class PredictionChange(ModelDetector):
    """Share of trigger images whose predicted class differs from M's; also the worst class (by
    true label), so a change confined to one class or to the last layer stands out."""

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> PredictionChange:
        self._fit_common(genuine)
        self.preds_ = np.asarray(genuine.preds)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        changed = (np.asarray(rec.preds) != self.preds_).astype(np.float64)
        return {
            "score": float(changed.mean()),
            "worst_class": float(class_means(changed, self.labels_, self.classes_).max()),
        }


class Mahalanobis(ModelDetector):
    """Mean Mahalanobis distance of each image's activation to M's mean activation of its true
    class, under M's shared covariance (Ledoit-Wolf shrinkage), minus M's own mean distance;
    also the worst class."""

    needs = ("activations",)

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
    ) -> Mahalanobis:
        from sklearn.covariance import LedoitWolf

        self._fit_common(genuine)
        a = np.asarray(genuine.need("activations"), dtype=np.float64)
        self.means_ = np.vstack([a[self.labels_ == c].mean(0) for c in self.classes_])
        centred = a - self.means_[np.searchsorted(self.classes_, self.labels_)]
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).get_precision()
        self.baseline_ = self._distances(a)
        return self

    def _distances(self, a: np.ndarray) -> np.ndarray:
        c = (
            np.asarray(a, dtype=np.float64)
            - self.means_[np.searchsorted(self.classes_, self.labels_)]
        )
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", c, self.precision_, c), 0.0))

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        a = np.asarray(rec.need("activations"))
        if a.shape[1] != self.means_.shape[1]:
            raise PoisonDetectError(
                f"model {rec.name!r}: activations of width {a.shape[1]}, the genuine model's "
                f"{self.means_.shape[1]} (another architecture?)"
            )
        d = self._distances(a) - self.baseline_
        return {
            "score": float(d.mean()),
            "worst_class": float(class_means(d, self.labels_, self.classes_).max()),
        }
