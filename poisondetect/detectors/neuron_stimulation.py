"""Neuron stimulation (after ABS, Liu et al., ACM CCS 2019): a backdoor is carried by a few inner
neurons that, once raised, send any image to the attacker's class whatever the image shows.
Trigger inversion searches the trigger in the input (a patch); this raises one inner channel at a
time and watches where the images go, so it does not care what the trigger looks like in the
input (a warp, a blend, a patch).

For every channel ``j`` of one inner layer (``layer``), and every multiplier ``k`` of
``multipliers``, channel ``j``'s whole map is set to ``k`` x its largest activation over the
images (the same value at every position, every image), the rest of the network runs as it is,
and for every class ``t`` the mean softmax probability of ``t`` over the images of the *other*
classes is taken. A class's *elevation* is its largest such mean over channels and multipliers:
how far one raised channel can pull foreign images into it. Forward passes only: ``n_images``
x ``len(multipliers)`` images per channel (about a second per 28-pixel CNN on 2 cores with the
defaults).

``layer`` names the module whose output is stimulated (``dict(net.named_modules())``); ``auto``
takes the first module, in the order the forward pass calls them, whose output is a feature map
smaller than the input (the CNN's first max-pool, ``features.4``): early enough that most of the
network lies above it.

Statistics (higher = more suspicious; none reads the configured attacker class), over each
class's logit elevation *minus M's* (M's elevations found once, at fit: a channel that already
pulls images into a class in M is M's own shortcut, inherited by every honest fine-tune), minus
the model's median over classes (a fine-tune that raises every class alike moves nothing):

- ``score``: the largest class's value.
- ``honest_z``: each class's value against the *same class's* in the honest fitting replicates,
  in units of their standard deviation for that class (floored at ``SPREAD_FLOOR``), the largest
  over classes; a fitting replicate is compared with the others (left out by its name).

The fitted state holds M's elevations and the honest profiles, so ``audit`` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from poisondetect.checks import check_int
from poisondetect.detectors.base import keyword_init
from poisondetect.detectors.model_level import (
    KeptSearch,
    ModelDetector,
    ModelRecord,
    record_image_subset,
    record_network,
)
from poisondetect.errors import PoisonDetectError

SPREAD_FLOOR = 0.05  # honest_z: the honest spread of a class's value is at least this
PROB_CLIP = 1e-4  # elevations are clipped to [PROB_CLIP, 1 - PROB_CLIP] before the logit

PARAMS = {
    "layer": "auto",  # the module whose output channels are raised (auto: the first downsampling)
    "multipliers": [1.0, 2.0, 4.0, 8.0, 16.0],  # x each channel's largest activation
    "n_images": 200,  # images (a seeded stratified choice of the trigger set; all if fewer)
    "seed": 0,
    "device": "auto",
}


def _is_map(value, like) -> bool:
    return hasattr(value, "dim") and value.dim() == 4 and value.shape[-1] < like.shape[-1]


def find_layer(net, x) -> str:
    """``layer: auto``: the first module (in the order the forward pass calls them) among the
    network's top-level modules and their children whose output is a 4-D feature map narrower
    than the input ``x`` (a torch tensor): the CNN's first max-pool (``features.4``), a ResNet's
    first downsampling block (``layer2.0``), never a layer inside a residual block."""
    import torch

    called: list[str] = []
    hooks = [
        module.register_forward_hook(
            lambda mod, inp, out, name=name: called.append(name) if _is_map(out, x) else None
        )
        for name, module in net.named_modules()
        if name and name.count(".") <= 1  # a stage, or one block of a top-level stage
    ]
    try:
        with torch.no_grad():
            net(x[:1].to(next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    if not called:
        raise PoisonDetectError(
            "neuron_stimulation: no module of the network downsamples the image; name the layer "
            "to stimulate in model_level.detectors.neuron_stimulation.layer"
        )
    return called[0]


def elevations(net, x, y, *, layer: str, multipliers: Sequence[float], device) -> np.ndarray:
    """Each class's elevation (see the module's docstring) for images ``x`` (N, C, H, W) in
    [0, 1] with labels ``y``. The network is copied to ``device`` and frozen; it is not
    modified."""
    import copy

    import torch

    from poisondetect.runtime import deterministic_cuda

    dev = torch.device(device)
    if dev.type == "cuda":
        deterministic_cuda()
    model = copy.deepcopy(net).to(dev).eval()
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise PoisonDetectError(
            f"neuron_stimulation: the network has no module {layer!r} (layer names a module of "
            f"net.named_modules(), for example {next(iter(n for n in modules if n), '?')!r}, "
            "or is auto)"
        )
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    ys = torch.from_numpy(np.asarray(y)).to(dev)
    mult = torch.tensor([float(m) for m in multipliers], dtype=torch.float32, device=dev)
    state: dict = {}

    def hook(mod, inp, out):
        if "replace" not in state:  # the first pass: record the layer's output
            state["out"] = out.detach()
            return None
        return state["replace"]

    handle = modules[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(xs)
            h = state.get("out")
            if h is None or h.dim() < 3 or h.shape[0] != len(xs):
                raise PoisonDetectError(
                    f"neuron_stimulation: module {layer!r} gives no channel map (its output is "
                    f"{None if h is None else tuple(h.shape)}); name a convolutional stage"
                )

            def upper(stack):
                """The network above the layer on ``stack`` (the layer's output for a batch):
                one image goes in below, the hook swaps the layer's output for the stack, so the
                part below the layer runs once in all."""
                state["replace"] = stack
                return model(xs[:1])

            # the layer must be a cut: nothing below it may reach above it (a skip connection)
            again = upper(h)
            if again.shape != logits.shape or not torch.allclose(again, logits, 1e-4, 1e-4):
                raise PoisonDetectError(
                    f"neuron_stimulation: module {layer!r} is not a cut of the network (a skip "
                    "connection bypasses it); name a whole stage, or leave layer at auto"
                )
            k = logits.shape[1]
            others = torch.stack([(ys != c) for c in range(k)]).float()  # (K, N)
            others = others / others.sum(1, keepdim=True).clamp_min(1)
            peak = h.flatten(2).amax(dim=(0, 2)).clamp_min(1e-3)  # per channel, over images
            stack = h.repeat(len(mult), *([1] * (h.dim() - 1)))  # every multiplier's copy
            values = mult.repeat_interleave(len(xs)).view(-1, *([1] * (h.dim() - 2)))
            best = torch.zeros(k, device=dev)
            for j in range(h.shape[1]):
                raised = stack.clone()
                raised[:, j] = values * peak[j]
                p = torch.softmax(upper(raised), 1).view(len(mult), len(xs), k)
                share = torch.einsum("mnk,kn->mk", p, others)  # (multipliers, classes)
                best = torch.maximum(best, share.amax(0))
    finally:
        handle.remove()
    return best.cpu().numpy().astype(np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_CLIP, 1 - PROB_CLIP)
    return np.log(p / (1 - p))


class NeuronStimulation(KeptSearch, ModelDetector):
    """ABS-style neuron stimulation (see the module's docstring): each class's elevation by one
    raised inner channel, against M's; ``score`` the largest class's, ``honest_z`` each class
    against the same class in the honest fitting replicates."""

    needs = ("network", "images")
    costly = True  # about a second per model: the stage keeps each model's statistics
    config_name = "neuron_stimulation"
    search_folder = "elevations"
    __init__ = keyword_init(**PARAMS)

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> NeuronStimulation:
        where = f"model_level.detectors.{self.config_name}"
        check_int(f"{where}.n_images", self.n_images, 2)
        check_int(f"{where}.seed", self.seed, 0)
        if not isinstance(self.layer, str) or not self.layer:
            raise PoisonDetectError(f"{where}.layer must be a module name or auto")
        mult = self.multipliers
        if (
            not isinstance(mult, list | tuple)
            or not mult
            or not all(
                isinstance(m, int | float) and not isinstance(m, bool) and np.isfinite(m) and m > 0
                for m in mult
            )
        ):
            raise PoisonDetectError(
                f"{where}.multipliers must be a non-empty list of positive numbers, got {mult!r:.60}"
            )
        from poisondetect.runtime import pick_device

        pick_device(self.device)  # a bad device fails here, before any model is scored
        self._fit_common(genuine)
        self._seen = {}  # elevations of this fit (``KeptSearch._searched``)
        if self.layer == "auto":
            import torch

            x, _ = record_image_subset(genuine, self.n_images, self.seed)
            self.layer_ = find_layer(record_network(genuine), torch.from_numpy(x))
        else:
            self.layer_ = self.layer
        self.reference_ = _logit(self._searched(genuine))
        self._fit_honest_profiles(honest, self._profile)
        return self

    def elevations(self, rec: ModelRecord) -> np.ndarray:
        """One model's elevation per class."""
        from poisondetect.runtime import pick_device

        if not hasattr(self, "layer_"):
            raise PoisonDetectError(f"{type(self).__name__} is not fitted: call fit() first")
        self._check([rec])
        x, y = record_image_subset(rec, self.n_images, self.seed)
        return elevations(record_network(rec), x, y, layer=self.layer_,
                          multipliers=self.multipliers, device=pick_device(self.device))  # fmt: skip

    def _search_key(self) -> dict:
        return {**super()._search_key(), "layer": self.layer_}

    def _search(self, rec: ModelRecord) -> np.ndarray:
        return self.elevations(rec)  # what KeptSearch keeps, in cache/elevations

    def _profile(self, rec: ModelRecord) -> np.ndarray:
        """Each class's logit elevation minus M's, minus the model's median over classes."""
        v = _logit(self._searched(rec))
        if v.shape != self.reference_.shape:
            raise PoisonDetectError(
                f"model {rec.name!r}: {len(v)} classes, M had {len(self.reference_)}"
            )
        v = v - self.reference_
        return v - np.median(v)

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        profile = self._profile(rec)
        return {
            "score": float(profile.max()),
            "honest_z": float(self._honest_deviation(rec, profile, SPREAD_FLOOR).max()),
        }
