"""Trigger inversion at the model level: Neural Cleanse (Wang et al., IEEE S&P 2019) with K-Arm's
label-specific arms (Shen et al., ICML 2021), and a differential variant that uses the genuine
model M.

A backdoored model has a shortcut to the attacker's class: a small patch (the trigger) sends images
there. Each *arm* searches the smallest input change that does the same: a mask ``m`` (H, W) and a
pattern ``p`` (C, H, W), both in [0, 1] through a sigmoid of free logits (Neural Cleanse's
parametrisation), applied as ``x' = (1 - m) * x + m * p``. It minimises, with Adam, the
cross-entropy of ``x'`` towards the arm's target plus ``cost * |m|_1``, where ``cost`` follows
Neural Cleanse's schedule: every ``patience`` steps it is multiplied by ``cost_multiplier`` if the
arm's attack success over those steps reached ``success_threshold`` (and the mask is then kept if
it is the arm's smallest so far), else divided by ``cost_multiplier ** 1.5``. The L1 norm (pixels)
of the kept mask is the arm's norm (the whole image, H * W, for an arm that never succeeded).

Arms: with ``label_specific`` (the default) one per (source, target) pair of classes, patching the
source's images only. The model-level pattern attack pastes its square on images of *one* class,
so its trigger is source-specific and an arm over all classes' images (Neural Cleanse's original
all-to-one arm, ``label_specific=False``: one arm per target, over the images of every other class)
misses it. All arms are optimised together: their masks and patterns are stacked and each step
runs one forward and backward pass of the (arms x ``batch_size``) patched images. After
``prune_after`` steps only each target's most promising arm (the source with the smallest trigger
so far) is optimised further (K-Arm's pruning: with 10 classes and the defaults, 17 % of the
cost of optimising all 90 arms throughout; on MNIST, pruning after 20 steps instead of 100 took a
model from 30 to 11 s on one core with the same separation: docs/benchmarks.md).

- ``TriggerInversion``: the suspicious model alone.
- ``DifferentialTriggerInversion``, the suspicious model against M, in one of two modes.
  ``shared`` (the default): M is inverted once, when the detector is fitted, and each model's
  smallest trigger per target class is divided by M's for the same class; the statistics below
  are taken over these ratios. A natural shortcut M already has is as cheap in M and cancels;
  only what the fine-tune made cheaper stands out; a model costs one inversion, as with
  ``TriggerInversion``. ``joint``: the smallest patch that moves the suspicious model to the
  target while M does not follow it: ``reference_weight * -log(1 - p_M(target | x'))`` is added
  to the loss, an image counts as a success only if M does not predict the target on it, and
  images M already assigns to the target are left out (M in every step: twice the cost). M
  itself scores 0 in both. The fitted state holds M's norms (shared) or weights (joint), so a
  restored detector needs no other file.

Every arm stops once it has a trigger and ``converge`` windows of ``patience`` steps have not
shrunk it (``detectors/inversion.py``, where the optimisation lives).

Statistics, from each target class's smallest norm (over its arms; higher = more suspicious; none
reads the configured target or attacker class):

- ``score``: ``1 - min / median``, how far the smallest target's trigger lies below the median
  target's, in [0, 1].
- ``anomaly_index``: Neural Cleanse's anomaly index of the smallest, ``(median - min) / MAD`` over
  the target classes, MAD = 1.4826 x the median absolute deviation, floored at 1 % of the median
  (equal norms give 0, not a division by zero). Neural Cleanse flags an index above 2.
- ``small_trigger``: ``1 - min / (H * W)``, the share of the image the smallest trigger leaves
  untouched.
- ``honest_z``: each target's trigger compared with the *same target's* trigger in the honest
  fitting replicates. A model's profile is each target's log norm (log ratio to M's in the
  differential variant) minus the model's median over targets (so a fine-tune that makes every
  trigger cheaper, a high learning rate, moves nothing); the statistic is the largest amount by
  which a target's profile lies below the honest replicates' mean profile of that target, in
  units of their standard deviation for that target (floored at ``SPREAD_FLOOR``). A class whose
  trigger is naturally small, or naturally varies from one honest fine-tune to the next, needs
  to lie that much further below it. The fitted state keeps the honest replicates' profiles
  (``honest_profiles_``, rows named by ``honest_models_``); a fitting replicate is scored
  against the others (left out by its name), so its score is out of sample without refitting.
  With fewer than two honest replicates the honest mean is the one replicate's profile, or with
  none a flat one (M's, in the differential variant: every ratio 1), and the spread the floor.

``score`` is the relative gap rather than Neural Cleanse's index because the index, a ratio to the
MAD of only ten norms, is noisy: in ``benchmarks/trigger_inversion_check.py`` on MNIST it ranked
the clean genuine model (2.44) above both backdoored fine-tunes (1.48, 1.89), while the gap kept
every clean model (0.33 to 0.44) below them (0.67, 0.80).

The suspected class is not a statistic: ``inversions(records)`` returns each model's ``Inversion``
(every arm's norm, mask, pattern and success, ``suspected_class`` and ``suspected_source``), and
``summarise(inversion)`` the statistics from it, so a caller that wants both runs the optimisation
once. Both networks are copied to ``device`` and frozen; the records are not modified.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence

import numpy as np

from poisondetect.checks import check_int, check_number
from poisondetect.detectors.base import keyword_init
from poisondetect.detectors.inversion import Inversion, invert_triggers
from poisondetect.detectors.model_level import (
    ModelDetector,
    ModelRecord,
    record_image_subset,
    record_network,
)
from poisondetect.errors import PoisonDetectError

MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution (as Neural Cleanse)
MAD_FLOOR = 0.01  # the MAD is at least this share of the median norm
SPREAD_FLOOR = 0.05  # honest_z: the honest spread of a target's log norm is at least this (5 %)

# The parameters both detectors share (config block model_level.detectors.<name>).
PARAMS = {
    "label_specific": True,  # one arm per (source, target) pair; False: per target (all-to-one)
    "steps": 300,  # optimisation steps (mini-batches)
    "lr": 0.1,  # Adam's learning rate on the mask and pattern logits
    "batch_size": 4,  # images per arm and step (one forward of arms x batch_size images)
    "n_images": 256,  # trigger images used (a seeded stratified choice; all if fewer)
    "init_cost": 1e-3,  # initial weight of the mask's L1 norm (pixels) in the loss
    "cost_multiplier": 1.5,  # Neural Cleanse's cost schedule (up x m, down / m ** 1.5)
    "patience": 10,  # steps between two cost updates
    "success_threshold": 0.95,  # attack success a mask needs to count as a trigger
    "prune_after": 20,  # steps of every arm before only each target's best arm goes on
    "converge": 3,  # an arm stops after this many windows without a smaller trigger (0: never)
    "converge_tol": 0.02,  # what counts as smaller: by more than this share of its norm
    "seed": 0,
    "device": "auto",
}


def _gap(values: np.ndarray) -> dict[str, float]:
    """``score`` and ``anomaly_index`` of per-target values: how far the smallest lies below the
    median (see the module's docstring)."""
    med, low = float(np.median(values)), float(values.min())
    mad = max(MAD_SCALE * float(np.median(np.abs(values - med))), MAD_FLOOR * med, 1e-12)
    return {"score": 1.0 - low / max(med, 1e-12), "anomaly_index": (med - low) / mad}


def _profile(values: np.ndarray) -> np.ndarray:
    """``honest_z``'s profile: each target's log value minus the model's median log value."""
    v = np.log(np.maximum(values, 1e-12))
    return v - np.median(v)


def _summary(values: np.ndarray, norms: np.ndarray, area: float) -> dict[str, float]:
    """``score``, ``anomaly_index`` and ``small_trigger`` over per-target ``values`` (the norms,
    or their ratios to M's): ``small_trigger`` is the smallest target's own trigger (the one
    with the smallest value) against the image's area."""
    return {**_gap(values), "small_trigger": 1.0 - norms[int(np.argmin(values))] / area}


def summarise(inv: Inversion) -> dict[str, float]:
    """The detector's statistics from one inversion (see the module's docstring)."""
    norms = inv.target_norms().astype(np.float64)
    return _summary(norms, norms, inv.area)


class TriggerInversion(ModelDetector):
    """Neural Cleanse on the suspicious model: how much smaller its smallest target's trigger is
    than the median target's."""

    needs = ("network", "images")
    costly = True  # seconds per model: the stage keeps each model's statistics
    config_name = "trigger_inversion"
    __init__ = keyword_init(**PARAMS)

    def _validate(self) -> None:
        where = f"model_level.detectors.{self.config_name}"
        for name in ("steps", "batch_size", "n_images", "patience"):
            check_int(f"{where}.{name}", getattr(self, name), 1)
        check_int(f"{where}.seed", self.seed, 0)
        check_int(f"{where}.converge", self.converge, 0)
        check_number(f"{where}.converge_tol", self.converge_tol, 0, 1, closed=True)
        check_int(f"{where}.prune_after", self.prune_after, 0)
        check_number(f"{where}.lr", self.lr, 0)
        check_number(f"{where}.init_cost", self.init_cost, 0)
        check_number(f"{where}.cost_multiplier", self.cost_multiplier, 1)
        check_number(f"{where}.success_threshold", self.success_threshold, 0, 1)
        if not isinstance(self.label_specific, bool):
            raise PoisonDetectError(
                f"{where}.label_specific must be true or false, got {self.label_specific!r}"
            )
        from poisondetect.runtime import pick_device

        pick_device(self.device)  # a bad device fails here, before any model is scored
        self._seen = {}  # inversions of this fit (``_inverted``)

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> TriggerInversion:
        self._validate()
        self._fit_common(genuine)
        self._fit_honest(honest)
        return self

    def _fit_honest(self, honest: Sequence[ModelRecord]) -> None:
        """The honest replicates' profiles (``honest_z``); each is inverted once (kept for its
        own scoring: ``_inverted``)."""
        self._fit_honest_profiles(
            honest, lambda h: _profile(self._per_target(h, self._inverted(h)))
        )

    def _per_target(self, rec: ModelRecord, inv: Inversion) -> np.ndarray:
        """What the statistics are taken over: each target's smallest trigger norm."""
        return inv.target_norms().astype(np.float64)

    def _honest_z(self, rec: ModelRecord, profile: np.ndarray) -> float:
        """``honest_z`` of one model's profile (see the module's docstring): how far its lowest
        target lies below the honest replicates' mean for it."""
        return float(np.max(-self._honest_deviation(rec, profile, SPREAD_FLOOR)))

    def _reference(self, rec: ModelRecord):
        return None

    def invert(self, rec: ModelRecord) -> Inversion:
        """The inverted triggers of one model."""
        from poisondetect.runtime import pick_device

        self._check([rec])
        x, y = record_image_subset(rec, self.n_images, self.seed)
        return invert_triggers(
            record_network(rec),
            x,
            y,
            label_specific=self.label_specific,
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            init_cost=self.init_cost,
            cost_multiplier=self.cost_multiplier,
            patience=self.patience,
            success_threshold=self.success_threshold,
            prune_after=self.prune_after,
            seed=self.seed,
            device=pick_device(self.device),
            reference=self._reference(rec),
            reference_weight=getattr(self, "reference_weight", 0.0),
            converge=self.converge,
            converge_tol=self.converge_tol,
        )

    def inversions(self, records: Sequence[ModelRecord]) -> list[Inversion]:
        """Every model's inversion (``summarise`` of each gives ``statistics``)."""
        return [self.invert(rec) for rec in records]

    def keep_searches(self, cache: str, digest: Callable[[ModelRecord], str]) -> None:
        """Keep the inversions behind the statistics in ``cache``/inversions (one JSON per model:
        the arms' numbers, not masks), keyed by the parameters and ``digest(rec)`` (what the
        model and its images are), and read them back instead of inverting again. A scoring
        stage sets this, so that a rerun inverts only models it has not inverted with these
        parameters, whatever else changed (the honest population the statistics are relative
        to, say). Not a parameter and not fitted state: ``clone`` drops it. Not in joint mode,
        where an inversion depends on M too."""
        self._store = (os.path.join(cache, "inversions"), digest)

    def _inverted(self, rec: ModelRecord) -> Inversion:
        """``invert(rec)``, once per record object and fitted detector (the honest replicates
        inverted at ``fit`` are not inverted again when scored), through the store of
        ``keep_searches`` where there is one."""
        seen = self.__dict__.setdefault("_seen", {})  # this object's inversions, by record
        if id(rec) in seen and seen[id(rec)][0] is rec:
            return seen[id(rec)][1]
        inv = self._stored(rec)
        light = copy.copy(inv)
        light.masks = light.patterns = None
        seen[id(rec)] = (rec, light)
        return inv

    def _stored(self, rec: ModelRecord) -> Inversion:
        """``invert(rec)``, read from or written to the store where there is one."""
        store = getattr(self, "_store", None)
        if store is None or getattr(self, "reference_mode", "shared") == "joint":
            return self.invert(rec)
        from poisondetect.io import kept_json

        folder, digest = store
        # what shapes an inversion: the optimisation's parameters (not the statistics' settings)
        params = {k: getattr(self, k) for k in PARAMS if k != "device"}
        inv, _ = kept_json(
            os.path.join(folder, f"{rec.name}.json"),
            {"inversion": params, "model": digest(rec)},
            lambda: self.invert(rec),
            Inversion.to_json,
            Inversion.from_json,
        )
        return inv

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        inv = self._inverted(rec)
        values = self._per_target(rec, inv)
        norms = inv.target_norms().astype(np.float64)
        return {
            **_summary(values, norms, inv.area),
            "honest_z": self._honest_z(rec, _profile(values)),
        }


class DifferentialTriggerInversion(TriggerInversion):
    """Trigger inversion against M. ``reference_mode="shared"`` (the default): M is inverted
    once, at fit, and each model's smallest trigger per target is divided by M's for the same
    target (what the fine-tune made cheaper than it was in M; M's natural shortcuts cancel), the
    score how far the smallest ratio lies below the median ratio (a fine-tune that cheapens
    every target alike moves the median too);
    ``"joint"``: the smallest patch that moves the suspicious model while M does not follow it
    (M in every step's loss: twice the cost per model). Statistics as ``TriggerInversion``'s,
    on the ratios in shared mode."""

    config_name = "differential_trigger_inversion"
    __init__ = keyword_init(**PARAMS, reference_weight=1.0, reference_mode="shared")

    def fit(
        self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()
    ) -> DifferentialTriggerInversion:
        self._validate()
        where = f"model_level.detectors.{self.config_name}"
        check_number(f"{where}.reference_weight", self.reference_weight, 0, closed=True)
        if self.reference_mode not in ("shared", "joint"):
            raise PoisonDetectError(
                f"{where}.reference_mode must be 'shared' or 'joint', got {self.reference_mode!r:.40}"
            )
        self._fit_common(genuine)
        if self.reference_mode == "shared":
            self.reference_norms_ = self._inverted(genuine).target_norms().astype(np.float64)
        else:
            state = {
                k: v
                for k, v in record_network(genuine).state_dict().items()
                if v.is_floating_point()
            }
            self.reference_names_ = list(state)
            self.reference_state_ = np.concatenate(
                [v.detach().cpu().numpy().astype(np.float32).ravel() for v in state.values()]
            )
        self._fit_honest(honest)
        return self

    def _per_target(self, rec: ModelRecord, inv: Inversion) -> np.ndarray:
        """Shared mode: each target's smallest trigger over M's (against the model's own median
        ratio, a fine-tune that makes every trigger cheaper, a high learning rate, moves all
        ratios alike, a backdoor one target's); joint mode: the norms."""
        if self.reference_mode == "joint":
            return super()._per_target(rec, inv)
        if not hasattr(self, "reference_norms_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        norms, ref = inv.target_norms().astype(np.float64), self.reference_norms_
        if norms.shape != ref.shape:
            raise PoisonDetectError(
                f"model {rec.name!r}: {len(norms)} target classes, M had {len(ref)} (another "
                "trigger set or number of classes?)"
            )
        return norms / np.maximum(ref, 1e-12)

    def _reference(self, rec: ModelRecord):
        """M rebuilt from the fitted state in a copy of the suspicious model (same architecture);
        none in shared mode."""
        import torch

        if self.reference_mode == "shared":
            return None
        if not hasattr(self, "reference_state_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        net = copy.deepcopy(record_network(rec)).cpu()
        state = net.state_dict()
        sizes = [state[k].numel() if k in state else -1 for k in self.reference_names_]
        floats = [k for k, v in state.items() if v.is_floating_point()]
        if (
            -1 in sizes
            or sorted(floats) != sorted(self.reference_names_)
            or sum(sizes) != len(self.reference_state_)
        ):
            raise PoisonDetectError(
                f"model {rec.name!r}: its parameters do not match the genuine model's "
                "(another architecture?)"
            )
        flat = torch.from_numpy(self.reference_state_)
        start = 0
        for name, size in zip(self.reference_names_, sizes, strict=True):
            state[name] = (
                flat[start : start + size].reshape(state[name].shape).to(state[name].dtype)
            )
            start += size
        net.load_state_dict(state)
        return net.eval()
