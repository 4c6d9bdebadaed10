"""Maximum-margin detection (MM-BD: Wang, Miller and Kesidis, IEEE S&P 2024): a backdoor, whatever
its trigger's shape (a patch, a blended image, a warp, a clean-label poison), gives its target
class an input that drives that class's logit far above every other's. Trigger inversion searches
a *patch*; this searches any input.

For each class ``k`` the detector maximises the margin ``f_k(x) - max_{j != k} f_j(x)`` over
images ``x`` in [0, 1] (``x = sigmoid(z)``, Adam on ``z`` from ``restarts`` seeded random starts,
``steps`` steps, every class and start in one batch) and keeps the largest margin reached. No
image is needed, only the input's shape (read from the trigger images, which are checked to lie
in [0, 1]); the optimisation costs about a second per 28-pixel CNN on 2 cores with the defaults.

Statistics (higher = more suspicious; none reads the configured attacker class):

- ``score``: MM-BD's statistic in log form, how far the largest class's log margin lies above the
  median class's (``log max - median log``). A model whose every margin grows (a long fine-tune)
  moves all alike.
- ``honest_z``: each class's profile (log margin minus the model's median log margin) against
  the *same class's* profile in the honest fitting replicates, in units of their standard
  deviation for that class (floored at ``SPREAD_FLOOR``), the largest over classes. A class whose
  margin is naturally large (M's own shortcut, inherited by every honest fine-tune) is no sign of
  an attack; a class whose margin grew unlike its honest counterparts is. A fitting replicate is
  compared with the others (left out by its name); the fitted state keeps the honest profiles,
  so ``audit`` needs nothing else.

On the MNIST families benchmark (docs/benchmarks.md) it separates the blended and clean-label
attacks that trigger inversion misses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from poisondetect.checks import check_int, check_number
from poisondetect.detectors.base import keyword_init
from poisondetect.detectors.model_level import (
    ModelDetector,
    ModelRecord,
    record_images,
    record_network,
)
from poisondetect.errors import PoisonDetectError

SPREAD_FLOOR = 0.05  # honest_z: the honest spread of a class's log margin is at least this
MARGIN_FLOOR = 1e-3  # a class no input reaches (margin <= 0) counts as this margin (log scale)

PARAMS = {
    "steps": 150,  # Adam steps on the inputs
    "lr": 0.1,  # Adam's learning rate on the input logits
    "restarts": 2,  # random starts per class (the largest margin over them is kept)
    "seed": 0,
    "device": "auto",
}


def max_margins(net, shape: tuple[int, ...], *, steps: int, lr: float, restarts: int, seed: int,
                device) -> np.ndarray:  # fmt: skip
    """Each class's largest margin ``f_k(x) - max_{j != k} f_j(x)`` over inputs ``x`` in [0, 1]
    of ``shape`` (C, H, W) that ``steps`` Adam steps from ``restarts`` seeded starts reach. The
    network is copied to ``device`` and frozen; it is not modified."""
    import copy

    import torch

    from poisondetect.runtime import deterministic_cuda

    dev = torch.device(device)
    if dev.type == "cuda":
        deterministic_cuda()
    model = copy.deepcopy(net).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        k = int(model(torch.zeros(1, *shape, device=dev)).shape[1])
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(k * restarts, *shape, generator=gen).to(dev).requires_grad_(True)
    cls = torch.arange(k, device=dev).repeat_interleave(restarts)
    rows = torch.arange(len(cls), device=dev)
    opt = torch.optim.Adam([z], lr=lr)

    def margins():
        logits = model(torch.sigmoid(z))
        own = logits[rows, cls]
        others = logits.clone()
        others[rows, cls] = -torch.inf
        return own - others.max(1).values

    for _ in range(steps):
        opt.zero_grad()
        (-margins().sum()).backward()
        opt.step()
    with torch.no_grad():
        reached = margins().view(k, restarts).max(1).values
    return reached.cpu().numpy().astype(np.float64)


def _read_margins(entry) -> np.ndarray:
    """Margins read back from the store; anything but a non-empty list of finite numbers raises
    ValueError (the entry is then searched again)."""
    m = np.asarray(entry, dtype=np.float64)
    if m.ndim != 1 or not len(m) or not np.isfinite(m).all():
        raise ValueError("not a list of finite margins")
    return m


def _profile(margins: np.ndarray) -> np.ndarray:
    """Each class's log margin minus the model's median log margin."""
    v = np.log(np.maximum(margins, MARGIN_FLOOR))
    return v - np.median(v)


class MaxMargin(ModelDetector):
    """MM-BD's maximum margin per class (see the module's docstring): ``score`` the largest
    class's log margin over the median class's, ``honest_z`` each class against the same class
    in the honest fitting replicates."""

    needs = ("network", "images")
    costly = True  # about a second per model: the stage keeps each model's statistics
    config_name = "max_margin"
    __init__ = keyword_init(**PARAMS)

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> MaxMargin:
        where = f"model_level.detectors.{self.config_name}"
        for name in ("steps", "restarts"):
            check_int(f"{where}.{name}", getattr(self, name), 1)
        check_int(f"{where}.seed", self.seed, 0)
        check_number(f"{where}.lr", self.lr, 0)
        from poisondetect.runtime import pick_device

        pick_device(self.device)  # a bad device fails here, before any model is scored
        self._fit_common(genuine)
        self.input_shape_ = [int(n) for n in record_images(genuine).shape[1:]]
        self._seen = {}  # margins of this fit (``_margins``)
        self._fit_honest_profiles(honest, lambda h: _profile(self._margins(h)))
        return self

    def margins(self, rec: ModelRecord) -> np.ndarray:
        """One model's largest margin per class."""
        from poisondetect.runtime import pick_device

        if not hasattr(self, "input_shape_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        net = record_network(rec)
        return max_margins(net, tuple(self.input_shape_), steps=self.steps, lr=self.lr,
                           restarts=self.restarts, seed=self.seed,
                           device=pick_device(self.device))  # fmt: skip

    def keep_searches(self, cache: str, digest: Callable[[ModelRecord], str]) -> None:
        """Keep each model's margins in ``cache``/margins (one JSON per model), keyed by the
        search's parameters, the input shape and ``digest(rec)`` (what the model is), and read
        them back instead of searching again: a scoring stage sets this, so that a rerun after
        the attacks changed searches no honest model again. Not a parameter and not fitted
        state: ``clone`` drops it."""
        self._store = (os.path.join(cache, "margins"), digest)

    def _margins(self, rec: ModelRecord) -> np.ndarray:
        """``margins(rec)`` once per record object and fit (an honest replicate searched at
        ``fit`` is not searched again when scored), through the store of ``keep_searches``
        where there is one."""
        seen = self.__dict__.setdefault("_seen", {})
        if id(rec) in seen and seen[id(rec)][0] is rec:
            return seen[id(rec)][1]
        store = getattr(self, "_store", None)
        if store is None:
            margins = self.margins(rec)
        else:
            from poisondetect.io import kept_json

            folder, digest = store
            params = {k: v for k, v in self.get_params().items() if k != "device"}
            margins, _ = kept_json(
                os.path.join(folder, f"{rec.name}.json"),
                {"search": params, "shape": self.input_shape_, "model": digest(rec)},
                lambda: self.margins(rec),
                lambda m: [float(v) for v in m],
                _read_margins,
            )
        seen[id(rec)] = (rec, margins)
        return margins

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        profile = _profile(self._margins(rec))
        return {
            "score": float(profile.max()),
            "honest_z": float(self._honest_deviation(rec, profile, SPREAD_FLOOR).max()),
        }
