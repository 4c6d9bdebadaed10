"""The optimisation behind trigger inversion (``detectors/trigger_inversion.py``): Neural
Cleanse's search of the smallest mask and pattern that send a class's images to a target, for
every arm at once (K-Arm's label-specific arms and pruning), each arm stopped once its smallest
trigger stopped shrinking. ``invert_triggers`` returns an ``Inversion``: every arm's norm, mask,
pattern and success."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from poisondetect.errors import PoisonDetectError


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
    masks: np.ndarray | None  # (P, H, W) float32 in [0, 1] (None: an inversion read back from
    # a detector's store, which keeps the arms' numbers only)
    patterns: np.ndarray | None  # (P, C, H, W) float32 in [0, 1] (None as masks)
    steps_run: int = 0  # optimisation steps taken (fewer than ``steps`` once every arm stopped)
    area: float = 0.0  # pixels of one image (H * W): the norm of an arm that found no trigger

    ARRAYS = ("sources", "targets", "norms", "found", "success")

    def to_json(self) -> dict:
        """The arms' numbers (not masks or patterns) as plain JSON values."""
        out = {k: getattr(self, k).tolist() for k in self.ARRAYS}
        return {**out, "steps_run": int(self.steps_run), "area": float(self.area)}

    @classmethod
    def from_json(cls, entry: dict) -> Inversion:
        """An inversion back from ``to_json`` (masks and patterns None); a malformed entry
        raises ValueError."""
        dtypes = {"sources": np.int64, "targets": np.int64, "norms": np.float64,
                  "found": bool, "success": np.float64}  # fmt: skip
        arrays = {k: np.asarray(entry[k], dtype=dtypes[k]) for k in cls.ARRAYS}
        if len({len(v) for v in arrays.values()}) != 1 or arrays["norms"].ndim != 1:
            raise ValueError("arms of different lengths")
        if not len(arrays["norms"]) or not np.isfinite(arrays["norms"]).all():
            raise ValueError("no arm, or a norm that is not finite")
        return cls(**arrays, masks=None, patterns=None, steps_run=int(entry["steps_run"]),
                   area=float(entry["area"]))  # fmt: skip

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
    converge: int = 0,
    converge_tol: float = 0.02,
) -> Inversion:
    """Trigger inversion of every arm of ``net`` at once, on ``images`` (N, C, H, W) in [0, 1]
    with true ``labels`` (N,); with a ``reference`` network (M), the differential variant.
    Neither network is modified (each is copied to ``device``).

    An arm stops once it has a trigger and ``converge`` windows of ``patience`` steps in a row
    have not shrunk it by more than ``converge_tol`` (a share of its norm); the optimisation
    ends when every arm has stopped (``converge`` = 0: never, every arm runs ``steps``).

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

    def narrow(keep):  # go on with the active arms ``keep`` (bool), their Adam state kept
        nonlocal ml, pl, opt, active
        with torch.no_grad():
            mask_logit[active], pattern_logit[active] = ml, pl
        new = [v[keep].detach().clone().requires_grad_(True) for v in (ml, pl)]
        new_opt = torch.optim.Adam(new, lr=lr, betas=(0.5, 0.9))
        for old_v, new_v in zip((ml, pl), new, strict=True):
            st = opt.state.get(old_v)
            if st:
                new_opt.state[new_v] = {
                    k: (v[keep].clone() if k.startswith("exp_avg") else v.clone())
                    for k, v in st.items()
                }
        ml, pl, opt, active = new[0], new[1], new_opt, active[keep]

    ml, pl, opt = start(active)
    window = torch.zeros(p, device=dev)
    stale = torch.zeros(p, dtype=torch.long, device=dev)  # windows without a smaller trigger
    done = torch.zeros(p, dtype=torch.bool, device=dev)  # arms stopped (converged)
    steps_run = 0
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
                active = active[~done[active]]
            if not len(active):
                break
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
        steps_run = step + 1
        with torch.no_grad():
            window[active] += hit.reshape(a, b).float().mean(1)
            if (step + 1) % patience == 0:  # Neural Cleanse's bookkeeping, once per window
                up = window[active] / patience >= success_threshold
                before = best_norm[active].clone()
                better = up & (norms < before)
                idx = active[better]
                best_norm[idx] = norms[better]
                best_mask[idx] = mask[better]
                best_pattern[idx] = pattern[better]
                factor = torch.where(up, cost_multiplier, cost_multiplier**-1.5)
                cost[active] = (cost[active] * factor).clamp(1e-8, 1e4)
                window.zero_()
                if converge:
                    shrunk = up & (norms < before * (1 - converge_tol))
                    stale[active] = torch.where(shrunk, 0, stale[active] + 1)
                    stop = torch.isfinite(best_norm[active]) & (stale[active] >= converge)
                    if stop.any():
                        done[active[stop]] = True
                        if not bool(stop.all()):
                            narrow(~stop)
                        elif label_specific and step + 1 < prune_after:
                            prune_after = step + 1  # every arm stopped: prune now
                        else:
                            break

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
        steps_run=steps_run,
        area=area,
    )
