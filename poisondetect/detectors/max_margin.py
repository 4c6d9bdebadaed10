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

from collections.abc import Sequence

import numpy as np

from poisondetect.checks import check_int, check_number
from poisondetect.detectors.base import keyword_init
from poisondetect.detectors.model_level import (
    KeptSearch,
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


def _profile(margins: np.ndarray) -> np.ndarray:
    """Each class's log margin minus the model's median log margin."""
    v = np.log(np.maximum(margins, MARGIN_FLOOR))
    return v - np.median(v)


class MaxMargin(KeptSearch, ModelDetector):
    """MM-BD's maximum margin per class (see the module's docstring): ``score`` the largest
    class's log margin over the median class's, ``honest_z`` each class against the same class
    in the honest fitting replicates."""

    needs = ("network", "images")
    costly = True  # about a second per model: the stage keeps each model's statistics
    config_name = "max_margin"
    search_folder = "margins"
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
        self._seen = {}  # margins of this fit (``KeptSearch._searched``)
        self._fit_honest_profiles(honest, lambda h: _profile(self._searched(h)))
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

    def _search_key(self) -> dict:
        return {**super()._search_key(), "shape": self.input_shape_}

    def _search(self, rec: ModelRecord) -> np.ndarray:
        return self.margins(rec)  # what KeptSearch keeps, in cache/margins

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        profile = _profile(self._searched(rec))
        return {
            "score": float(profile.max()),
            "honest_z": float(self._honest_deviation(rec, profile, SPREAD_FLOOR).max()),
        }
