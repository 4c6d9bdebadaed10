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
so far) is optimised further (K-Arm's pruning: with 10 classes and the defaults, 40 % of the
cost of optimising all 90 arms throughout).

- ``TriggerInversion``: the suspicious model alone.
- ``DifferentialTriggerInversion``: the smallest patch that moves the suspicious model to the
  target while M does not follow it: ``reference_weight * -log(1 - p_M(target | x'))`` is added to
  the loss, an image counts as a success only if M does not predict the target on it, and images M
  already assigns to the target are left out. Natural shortcuts that M shares cost as much as in M,
  so only what the fine-tune added stays cheap; M itself scores 0. The fitted state holds M's
  weights (as ``weight_distance`` does), so a restored detector needs no other file.

Statistics, from each target class's smallest norm (over its arms; higher = more suspicious; none
reads the configured target or attacker class):

- ``score``: ``1 - min / median``, how far the smallest target's trigger lies below the median
  target's, in [0, 1].
- ``anomaly_index``: Neural Cleanse's anomaly index of the smallest, ``(median - min) / MAD`` over
  the target classes, MAD = 1.4826 x the median absolute deviation, floored at 1 % of the median
  (equal norms give 0, not a division by zero). Neural Cleanse flags an index above 2.
- ``small_trigger``: ``1 - min / (H * W)``, the share of the image the smallest trigger leaves
  untouched.

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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from poisondetect.detectors.base import keyword_init
from poisondetect.detectors.model_level import ModelDetector, ModelRecord
from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import stratified_subset

MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution (as Neural Cleanse)
MAD_FLOOR = 0.01  # the MAD is at least this share of the median norm

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
    "prune_after": 100,  # steps of every arm before only each target's best arm goes on
    "seed": 0,
    "device": "auto",
}


@dataclass
class Inversion:
    """One model's inverted triggers, one row per arm: a (source, target) pair of classes, or
    with ``label_specific=False`` a target class over the images of every other class (source
    -1)."""

    sources: np.ndarray  # (P,) int: the class whose images the arm patches (-1: all but target)
    targets: np.ndarray  # (P,) int: the class the patch sends them to
    norms: np.ndarray  # (P,) L1 norm of the smallest successful mask (H * W if none succeeded)
    found: np.ndarray  # (P,) bool: a mask reached the success threshold
    success: np.ndarray  # (P,) attack success of the kept mask on all the arm's images
    masks: np.ndarray  # (P, H, W) float32 in [0, 1]
    patterns: np.ndarray  # (P, C, H, W) float32 in [0, 1]

    @property
    def best(self) -> int:
        """The arm of the smallest trigger."""
        return int(np.argmin(self.norms))

    @property
    def suspected_class(self) -> int:
        """The target of the smallest trigger (the attacker's class if the model is poisoned)."""
        return int(self.targets[self.best])

    @property
    def suspected_source(self) -> int:
        """The source class of the smallest trigger (-1 for an all-to-one arm)."""
        return int(self.sources[self.best])

    def target_norms(self) -> np.ndarray:
        """Each target class's smallest trigger norm (over its arms), in class order."""
        return np.array([self.norms[arms].min() for arms in _by_target(self.targets)])


def summarise(inv: Inversion) -> dict[str, float]:
    """The detector's statistics from one inversion (see the module's docstring)."""
    norms = inv.target_norms().astype(np.float64)
    area = float(np.prod(inv.masks.shape[1:]))
    med, low = float(np.median(norms)), float(norms.min())
    mad = max(MAD_SCALE * float(np.median(np.abs(norms - med))), MAD_FLOOR * med, 1e-12)
    return {
        "score": 1.0 - low / max(med, 1e-12),
        "anomaly_index": (med - low) / mad,
        "small_trigger": 1.0 - low / area,
    }


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise PoisonDetectError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value, low: float, high: float | None = None, *, closed=False) -> None:
    """``value`` a number above ``low`` (at least ``low`` if ``closed``), at most ``high``."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    ok = ok and (value >= low if closed else value > low) and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if closed else f"> {low}"
        span = f"in ({low}, {high}]" if high is not None else span
        raise PoisonDetectError(f"{name} must be a number {span}, got {value!r}")


def _arms(labels, num_classes, label_specific, ref_pred):
    """(sources, targets, pools): each arm's source, target and the indices of its images."""
    sources, targets, pools = [], [], []
    for s in np.unique(labels) if label_specific else [-1]:
        for t in range(num_classes):
            if t == s:
                continue
            pool = np.flatnonzero(labels == s if s >= 0 else labels != t)
            if ref_pred is not None:  # images M already assigns to the target prove nothing
                pool = pool[ref_pred[pool] != t]
            if len(pool):
                sources.append(int(s))
                targets.append(t)
                pools.append(pool)
    return np.array(sources), np.array(targets), pools


def _by_target(targets: np.ndarray) -> list[np.ndarray]:
    """The arm indices of each target class, in the order of the targets."""
    return [np.flatnonzero(targets == t) for t in np.unique(targets)]


def invert_triggers(
    net,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    label_specific: bool,
    steps: int,
    lr: float,
    batch_size: int,
    init_cost: float,
    cost_multiplier: float,
    patience: int,
    success_threshold: float,
    prune_after: int,
    seed: int,
    device,
    reference=None,
    reference_weight: float = 1.0,
) -> Inversion:
    """Trigger inversion of every arm of ``net`` at once, on ``images`` (N, C, H, W) in [0, 1]
    with true ``labels`` (N,); with a ``reference`` network (M), the differential variant.
    Neither network is modified (each is copied to ``device``).

    (One function on purpose: the optimisation loop of Neural Cleanse, whose cost schedule, kept
    smallest triggers and pruning share the state of every arm from step to step.)"""
    import torch
    import torch.nn.functional as F

    from poisondetect.runtime import deterministic_cuda

    dev = torch.device(device)
    if dev.type == "cuda":
        deterministic_cuda()
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)

    def frozen(module):
        m = copy.deepcopy(module).to(dev).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def predict(m, x):
        return torch.cat([m(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])

    model = frozen(net)
    ref = frozen(reference) if reference is not None else None
    x_all = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=dev)
    labels = np.asarray(labels)
    n, c, h, w = x_all.shape
    with torch.no_grad():
        k = int(model(x_all[:1]).shape[1])
        ref_pred = predict(ref, x_all).cpu().numpy() if ref is not None else None
    sources, targets, pools = _arms(labels, k, label_specific, ref_pred)
    p = len(targets)
    if p == 0:
        raise PoisonDetectError(
            "trigger inversion: no image to patch (the trigger set needs images of at least two "
            "classes)"
        )
    # each arm's images, step by step: its pool in seeded random orders, one after the other
    b = batch_size
    stream = np.stack(
        [
            np.concatenate([rng.permutation(pool) for _ in range(-(-steps * b // len(pool)))])[
                : steps * b
            ]
            for pool in pools
        ]
    )
    stream = torch.as_tensor(stream, device=dev)
    tgt = torch.as_tensor(targets, device=dev)

    # Neural Cleanse's start: random masks and patterns (seeded)
    mask_logit = torch.logit(torch.rand(p, 1, h, w, generator=gen).clamp(0.05, 0.95)).to(dev)
    pattern_logit = torch.logit(torch.rand(p, c, h, w, generator=gen).clamp(0.05, 0.95)).to(dev)
    cost = torch.full((p,), float(init_cost), device=dev)
    best_norm = torch.full((p,), float("inf"), device=dev)
    best_mask = torch.zeros(p, 1, h, w, device=dev)
    best_pattern = torch.zeros(p, c, h, w, device=dev)
    active = torch.arange(p, device=dev)  # the arms still optimised

    def patched(mask, pattern, xb):  # (P, B, C, H, W) -> (P * B, C, H, W)
        xa = (1 - mask[:, None]) * xb + (mask * pattern)[:, None]
        return xa.reshape(-1, c, h, w)

    def hits(xa, t):  # (P * B,) the patch worked: the model says t (and M does not)
        hit = model(xa).argmax(1) == t
        return hit & (ref(xa).argmax(1) != t) if ref is not None else hit

    def start(arms):  # the optimiser over the arms ``arms`` (fresh Adam state)
        ml = mask_logit[arms].detach().clone().requires_grad_(True)
        pl = pattern_logit[arms].detach().clone().requires_grad_(True)
        return ml, pl, torch.optim.Adam([ml, pl], lr=lr, betas=(0.5, 0.9))

    ml, pl, opt = start(active)
    window = torch.zeros(p, device=dev)
    for step in range(steps):
        if step == prune_after and label_specific:
            # K-Arm's idea: from here on, only each target's most promising arm (the source with
            # the smallest trigger so far) is optimised
            with torch.no_grad():
                mask_logit[active], pattern_logit[active] = ml, pl
                rank = torch.where(
                    torch.isfinite(best_norm),
                    best_norm,
                    h * w + torch.sigmoid(mask_logit).sum(dim=(1, 2, 3)),
                ).cpu()
                active = torch.as_tensor(
                    [int(arms[rank[arms].argmin()]) for arms in _by_target(targets)], device=dev
                )
            ml, pl, opt = start(active)
        a = len(active)
        t_b = tgt[active].repeat_interleave(b)
        xb = x_all[stream[active, step * b : (step + 1) * b]]  # (A, B, C, H, W)
        mask, pattern = torch.sigmoid(ml), torch.sigmoid(pl)
        xa = patched(mask, pattern, xb)
        logits = model(xa)
        loss_img = F.cross_entropy(logits, t_b, reduction="none")
        hit = logits.argmax(1) == t_b
        if ref is not None:
            ref_logits = ref(xa)
            # -log(1 - p_M(t | x')): M must not follow the patch to t
            p_t = torch.softmax(ref_logits, 1).gather(1, t_b[:, None])[:, 0]
            loss_img = loss_img - reference_weight * torch.log1p(-p_t.clamp(max=1 - 1e-6))
            hit = hit & (ref_logits.argmax(1) != t_b)
        norms = mask.sum(dim=(1, 2, 3))
        loss = (loss_img.reshape(a, b).mean(1) + cost[active] * norms).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            window[active] += hit.reshape(a, b).float().mean(1)
            if (step + 1) % patience == 0:  # Neural Cleanse's bookkeeping, once per window
                up = window[active] / patience >= success_threshold
                better = up & (norms < best_norm[active])
                idx = active[better]
                best_norm[idx] = norms[better]
                best_mask[idx] = mask[better]
                best_pattern[idx] = pattern[better]
                factor = torch.where(up, cost_multiplier, cost_multiplier**-1.5)
                cost[active] = (cost[active] * factor).clamp(1e-8, 1e4)
                window.zero_()

    found = torch.isfinite(best_norm)
    # success of each kept mask on all the arm's images
    arm = np.concatenate([np.full(len(pool), i) for i, pool in enumerate(pools)])
    img = np.concatenate(pools)
    hit_all = np.zeros(len(img), dtype=bool)
    with torch.no_grad():
        for i in range(0, len(img), 256):
            a = torch.as_tensor(arm[i : i + 256], device=dev)
            xb = x_all[torch.as_tensor(img[i : i + 256], device=dev)]
            xa = (1 - best_mask[a]) * xb + best_mask[a] * best_pattern[a]
            hit_all[i : i + 256] = hits(xa, tgt[a]).cpu().numpy()
    success = np.bincount(arm, weights=hit_all, minlength=p) / np.bincount(arm, minlength=p)
    area = float(h * w)
    return Inversion(
        sources=sources,
        targets=targets,
        norms=torch.where(found, best_norm, torch.full_like(best_norm, area))
        .cpu()
        .double()
        .numpy(),
        found=found.cpu().numpy(),
        success=np.where(found.cpu().numpy(), success, 0.0),
        masks=best_mask[:, 0].cpu().numpy(),
        patterns=best_pattern.cpu().numpy(),
    )


class TriggerInversion(ModelDetector):
    """Neural Cleanse on the suspicious model: how much smaller its smallest target's trigger is
    than the median target's."""

    needs = ("network", "images")
    config_name = "trigger_inversion"
    __init__ = keyword_init(**PARAMS)

    def _validate(self) -> None:
        where = f"model_level.detectors.{self.config_name}"
        for name in ("steps", "batch_size", "n_images", "patience"):
            _check_int(f"{where}.{name}", getattr(self, name), 1)
        _check_int(f"{where}.seed", self.seed, 0)
        _check_int(f"{where}.prune_after", self.prune_after, 0)
        _check_number(f"{where}.lr", self.lr, 0)
        _check_number(f"{where}.init_cost", self.init_cost, 0)
        _check_number(f"{where}.cost_multiplier", self.cost_multiplier, 1)
        _check_number(f"{where}.success_threshold", self.success_threshold, 0, 1)
        if not isinstance(self.label_specific, bool):
            raise PoisonDetectError(
                f"{where}.label_specific must be true or false, got {self.label_specific!r}"
            )
        from poisondetect.runtime import pick_device

        pick_device(self.device)  # a bad device fails here, before any model is scored

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> TriggerInversion:
        self._validate()
        self._fit_common(genuine)
        return self

    def _images(self, rec: ModelRecord) -> tuple[np.ndarray, np.ndarray]:
        """The seeded choice of ``n_images`` trigger images (the same for every model)."""
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
        idx = stratified_subset(rec.labels, int(self.n_images), self.seed)
        return x[idx].astype(np.float32), np.asarray(rec.labels)[idx]

    def _network(self, rec: ModelRecord):
        from torch import nn

        net = rec.need("network")
        if not isinstance(net, nn.Module):
            raise PoisonDetectError(
                f"model {rec.name!r}: network must be a torch nn.Module, got {type(net).__name__}"
            )
        return net

    def _reference(self, rec: ModelRecord):
        return None

    def invert(self, rec: ModelRecord) -> Inversion:
        """The inverted triggers of one model."""
        from poisondetect.runtime import pick_device

        self._check([rec])
        x, y = self._images(rec)
        return invert_triggers(
            self._network(rec),
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
        )

    def inversions(self, records: Sequence[ModelRecord]) -> list[Inversion]:
        """Every model's inversion (``summarise`` of each gives ``statistics``)."""
        return [self.invert(rec) for rec in records]

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        return summarise(self.invert(rec))


class DifferentialTriggerInversion(TriggerInversion):
    """The smallest patch that moves the suspicious model but leaves M's predictions unchanged;
    statistics as ``TriggerInversion``'s."""

    config_name = "differential_trigger_inversion"
    __init__ = keyword_init(**PARAMS, reference_weight=1.0)

    def fit(
        self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()
    ) -> DifferentialTriggerInversion:
        self._validate()
        _check_number(
            f"model_level.detectors.{self.config_name}.reference_weight",
            self.reference_weight,
            0,
            closed=True,
        )
        self._fit_common(genuine)
        state = {
            k: v for k, v in self._network(genuine).state_dict().items() if v.is_floating_point()
        }
        self.reference_names_ = list(state)
        self.reference_state_ = np.concatenate(
            [v.detach().cpu().numpy().astype(np.float32).ravel() for v in state.values()]
        )
        return self

    def _reference(self, rec: ModelRecord):
        """M rebuilt from the fitted state in a copy of the suspicious model (same architecture)."""
        import torch

        if not hasattr(self, "reference_state_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        net = copy.deepcopy(self._network(rec)).cpu()
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
