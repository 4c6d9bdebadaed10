"""The model-level attack kinds (``attacks/base.py``'s protocol; registered by name in
``attacks/registry.py``): label flipping, the source-specific pattern (the paper's two), BadNets'
all-to-one patch, a blended pattern (Chen et al. 2017), WaNet's warping (Nguyen and Tran 2021),
clean-label (Turner et al. 2019) and an adaptive trigger optimised against M's activations."""

from __future__ import annotations

import numpy as np

from poisondetect.attacks.base import (
    _PGD_STREAM,
    _TRIGGER_STREAM,
    Attack,
    AttackedSet,
    _check_classes,
)
from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import derive_seed


def _pair(target_class, attacker_class, fraction, seed, num_classes) -> dict:
    """The keywords of the paper's two attacks (``attacks/labels.py``)."""
    return dict(
        target_class=target_class,
        attacker_class=attacker_class,
        fraction=fraction,
        seed=seed,
        num_classes=num_classes,
    )


class Flip(Attack):
    name = "flip"
    label = "FA"
    title = "flipping (FA)"
    description = "label flipping (FA): target-class images relabelled as the attacker's class"

    def poison(self, x, y, *, target_class, attacker_class, fraction, seed, num_classes=None,
               **_):  # fmt: skip
        from poisondetect.attacks.labels import flip_attack

        pair = _pair(target_class, attacker_class, fraction, seed, num_classes)
        return flip_attack(x, y, **pair)


class Pattern(Attack):
    name = "pattern"
    label = "PAA"
    title = "pattern addition (PAA)"
    description = (
        "pattern addition (PAA): a square of constant pixels at a random position on target-class "
        "images, relabelled (source-specific patch)"
    )
    settings = {"pattern_size": 5, "pattern_value": 1.0}

    def poison(self, x, y, *, target_class, attacker_class, fraction, seed, num_classes=None,
               **block):  # fmt: skip
        from poisondetect.attacks.labels import pattern_attack

        pair = _pair(target_class, attacker_class, fraction, seed, num_classes)
        return pattern_attack(x, y, **pair, **self.options(block))

    def trigger(self, x, *, seed, pattern_size, pattern_value, **_):
        from poisondetect.attacks.labels import paste_pattern

        # the held-out positions: a stream apart from the poisoned images' (seed + 1)
        return paste_pattern(x, pattern_size, pattern_value, np.random.default_rng(seed + 1))


def add_corner_pattern(x: np.ndarray, distance: int, value: float, corners: int = 1) -> np.ndarray:
    """Copy of images (N, C, H, W) with BadNets' four-pixel pattern near the bottom-right corner,
    ``distance`` pixels from the edges, in every channel (ART's ``add_pattern_bd``); with
    ``corners=4`` also its mirror images near the other three corners (Turner et al. 2019's
    clean-label trigger, a pattern at every corner: 16 pixels)."""
    _, _, h, w = x.shape
    if not 1 <= distance <= min(h, w) - 3:
        raise PoisonDetectError(
            f"attacks.badnets_distance = {distance}: the pattern does not fit in {h}x{w} images"
        )
    if corners not in (1, 4):
        raise PoisonDetectError(f"the corner pattern goes on 1 or 4 corners, got {corners!r:.20}")
    out = x.copy()
    r, c = h - distance, w - distance
    for dr, dc in ((0, 0), (-1, -1), (0, -2), (-2, 0)):
        out[:, :, r + dr, c + dc] = value
        if corners == 4:  # mirrored: row r + dr <-> h - 1 - (r + dr), the same for columns
            out[:, :, h - 1 - (r + dr), c + dc] = value
            out[:, :, r + dr, w - 1 - (c + dc)] = value
            out[:, :, h - 1 - (r + dr), w - 1 - (c + dc)] = value
    return out


class AllToOne(Attack):
    """An all-to-one backdoor: the trigger on images of every class but the attacker's,
    relabelled to it; success measured on every other class's test images."""

    sources = "others"

    def candidates(self, y, target_class, attacker_class):
        return np.flatnonzero(y != attacker_class)


class BadNets(AllToOne):
    name = "badnets"
    label = "BadNets"
    description = (
        "BadNets (Gu et al. 2017), all-to-one: a fixed four-pixel pattern near the bottom-right "
        "corner on images of every class, relabelled as the attacker's class"
    )
    settings = {"badnets_distance": 2, "badnets_value": 1.0}

    def trigger(self, x, *, seed, badnets_distance, badnets_value, **_):
        return add_corner_pattern(x, badnets_distance, badnets_value)


def blend_pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A model's fixed blend pattern: uniform noise in [0, 1] of one image's shape (C, H, W)."""
    rng = np.random.default_rng(derive_seed(seed, _TRIGGER_STREAM))
    return rng.random(shape, dtype=np.float32)


class Blend(AllToOne):
    name = "blend"
    label = "Blend"
    description = (
        "blended (Chen et al. 2017), all-to-one: a fixed random pattern (seeded per model) blended "
        "over the whole image at alpha, x' = (1 - alpha) x + alpha p, relabelled"
    )
    settings = {"blend_alpha": 0.2}

    def trigger(self, x, *, seed, blend_alpha, **_):
        if not 0 < blend_alpha <= 1:
            raise PoisonDetectError(f"attacks.blend_alpha = {blend_alpha}: choose 0 < alpha <= 1")
        p = blend_pattern(x.shape[1:], seed)
        return ((1 - blend_alpha) * x + blend_alpha * p).astype(x.dtype)


def warping_field(h: int, w: int, k: int, strength: float, seed: int) -> np.ndarray:
    """WaNet's warping grid (Nguyen & Tran 2021) in grid_sample's [-1, 1] coordinates, (H, W, 2):
    k x k random control offsets (normalised by their mean absolute value), upsampled bicubically
    to the image, scaled by ``strength`` / H and added to the identity grid, clipped to [-1, 1]."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(derive_seed(seed, _TRIGGER_STREAM))
    ins = torch.from_numpy(rng.uniform(-1, 1, size=(1, 2, k, k)).astype(np.float32))
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]
    grid = torch.clamp(identity + strength * noise / h, -1, 1)
    return grid[0].numpy()


class WaNet(AllToOne):
    name = "wanet"
    label = "WaNet"
    description = (
        "WaNet (Nguyen & Tran 2021), all-to-one: a smooth warping field (k x k control points "
        "upsampled, strength s, seeded per model) applied with grid_sample, relabelled"
    )
    settings = {"wanet_k": 4, "wanet_strength": 0.5}

    def trigger(self, x, *, seed, wanet_k, wanet_strength, **_):
        import torch
        import torch.nn.functional as F

        if not len(x):
            return x.copy()
        n, _, h, w = x.shape
        grid = torch.from_numpy(warping_field(h, w, wanet_k, wanet_strength, seed))
        out = F.grid_sample(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            grid[None].expand(n, -1, -1, -1),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        return out.clamp(0, 1).numpy().astype(x.dtype)


class CleanLabel(Attack):
    name = "clean_label"
    label = "CL"
    description = (
        "clean-label (Turner et al. 2019): attacker-class images made hard to learn (a few L-inf "
        "PGD steps against M, or random +-eps noise without M), then BadNets' corner pattern "
        "(at every corner, as Turner et al., or at the bottom-right one); labels kept true"
    )
    settings = {
        "clean_label_eps": 0.3,
        "clean_label_steps": 5,
        "clean_label_value": 1.0,
        "clean_label_corners": 4,
    }
    sources = "others"
    needs_model = True

    def candidates(self, y, target_class, attacker_class):
        return np.flatnonzero(y == attacker_class)

    def choose(self, y, target_class, attacker_class, fraction, rng):
        # the budget of the attacker's own class (clean-label poisons only its images)
        return super().choose(y, attacker_class, attacker_class, fraction, rng)

    def relabel(self, y, idx, attacker_class):
        return y.copy()

    def trigger(self, x, *, seed, clean_label_value, clean_label_corners, **_):
        return add_corner_pattern(x, 2, clean_label_value, clean_label_corners)

    def poison(self, x, y, *, target_class, attacker_class, fraction, seed, num_classes=None,
               model=None, device="cpu", **block):  # fmt: skip
        _check_classes(y, attacker_class, num_classes)
        opts = self.options(block)
        rng = np.random.default_rng(seed)
        idx = self.choose(y, target_class, attacker_class, fraction, rng)
        hard = self.hard(x[idx], y[idx], model=model, seed=seed, device=device, **opts)
        x2 = x.copy()
        x2[idx] = self.trigger(hard, seed=seed, **opts)
        return AttackedSet(x=x2, y=y.copy(), attacked=idx)

    def hard(self, x, y, *, model, seed, device, clean_label_eps, clean_label_steps, **_):
        """The images made hard to learn: L-inf PGD (step 2.5 eps / steps) raising M's loss on
        their true label, from a random start; without M or with 0 steps, random +-eps noise."""
        rng = np.random.default_rng(derive_seed(seed, _PGD_STREAM))
        eps = float(clean_label_eps)
        delta = (eps * rng.choice([-1.0, 1.0], size=x.shape)).astype(np.float32)
        if model is None or clean_label_steps <= 0 or eps <= 0:
            return np.clip(x + delta, 0, 1).astype(x.dtype)
        import torch
        import torch.nn.functional as F

        was_training = model.training
        model.eval()
        dev = torch.device(device)
        model.to(dev)
        step = 2.5 * eps / clean_label_steps
        out = np.empty_like(x)
        for s in range(0, len(x), 256):
            x0 = torch.from_numpy(np.ascontiguousarray(x[s : s + 256])).to(dev)
            yb = torch.from_numpy(np.asarray(y[s : s + 256], dtype=np.int64)).to(dev)
            xa = (x0 + torch.from_numpy(delta[s : s + 256]).to(dev)).clamp(0, 1)
            for _ in range(clean_label_steps):
                xa.requires_grad_(True)
                loss = F.cross_entropy(model(xa), yb)
                (g,) = torch.autograd.grad(loss, xa)
                with torch.no_grad():
                    xa = xa + step * g.sign()
                    xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0, 1)
            out[s : s + 256] = xa.detach().cpu().numpy()
        model.train(was_training)
        return out


def _penultimate(model, x):
    """M's logits and penultimate activations (the input of ``model.classifier``)."""
    feats = []
    hook = model.classifier.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, feats[0].flatten(1)


class Adaptive(Attack):
    """An attack adapted to this workflow's detectors: a source-specific trigger optimised
    against M, so that the fine-tune has little to change, plus cover images."""

    name = "adaptive"
    label = "Adaptive"
    description = (
        "adaptive, source-specific: a blended trigger (mask and pattern) optimised against M so "
        "that the penultimate activations of triggered target-class images move onto the "
        "attacker class's mean while M still classifies them as their own class (so M carries no "
        "backdoor, and the fine-tune only has to move them across the boundary: it changes M's "
        "activations, its class profiles and its weights little), with an L1 penalty on the "
        "mask; plus cover images (TaCT, Tang et al. 2021): the trigger on images of other classes "
        "with their true labels, so only the target class flows to the attacker's"
    )
    settings = {
        "adaptive_steps": 100,
        "adaptive_feature_weight": 1.0,
        "adaptive_mask_weight": 0.01,
        "adaptive_cover": 0.5,
    }
    needs_model = True

    def trigger(self, x, *, seed, **_):
        if not hasattr(self, "mask_"):
            raise PoisonDetectError("adaptive: the trigger is optimised by poison() first")
        return np.clip((1 - self.mask_) * x + self.mask_ * self.pattern_, 0, 1).astype(x.dtype)

    def poison(self, x, y, *, target_class, attacker_class, fraction, seed, num_classes=None,
               model=None, device="cpu", **block):  # fmt: skip
        _check_classes(y, attacker_class, num_classes)
        if model is None:
            raise PoisonDetectError("adaptive: the attack optimises its trigger against M")
        opts = self.options(block)
        rng = np.random.default_rng(seed)
        idx = self.choose(y, target_class, attacker_class, fraction, rng)
        self.optimise(x, y, model, target_class, attacker_class, seed=seed, device=device, **opts)
        others = np.flatnonzero((y != target_class) & (y != attacker_class))
        n_cover = min(int(round(opts["adaptive_cover"] * len(idx))), len(others))
        cover = np.sort(rng.choice(others, size=n_cover, replace=False))
        x2 = x.copy()
        both = np.concatenate([idx, cover])
        x2[both] = self.trigger(x[both], seed=seed)
        # the cover images keep their true labels; only the poisons count as attacked
        return AttackedSet(x=x2, y=self.relabel(y, idx, attacker_class), attacked=idx)

    def optimise(self, x, y, model, target_class, attacker_class, *, seed, device,
                 adaptive_steps, adaptive_feature_weight, adaptive_mask_weight, **_):  # fmt: skip
        """Fit the mask (1, H, W) and pattern (C, H, W) by Adam on M (left unchanged):
        ``adaptive_feature_weight`` x the squared distance of triggered target-class images'
        penultimate activations to the attacker class's mean (relative to its norm), plus the
        cross entropy of M's prediction towards their own class (M must not already follow the
        trigger: an adversarial patch against M would be no poisoning), plus
        ``adaptive_mask_weight`` x the mask's L1 norm (Neural Cleanse's)."""
        import torch
        import torch.nn.functional as F

        gen = torch.Generator().manual_seed(derive_seed(seed, _TRIGGER_STREAM))
        rng = np.random.default_rng(derive_seed(seed, _TRIGGER_STREAM))
        dev = torch.device(device)
        was_training = model.training
        model.eval()
        model.to(dev)
        params = list(model.parameters())
        grads = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            src = np.flatnonzero(y == target_class)
            att = np.flatnonzero(y == attacker_class)
            with torch.no_grad():
                xa = torch.from_numpy(np.ascontiguousarray(x[rng.permutation(att)[:512]]))
                mu = _penultimate(model, xa.to(dev))[1].mean(0)
            c, h, w = x.shape[1:]
            m_raw = (torch.randn((1, h, w), generator=gen) * 0.1 - 3.0).to(dev).requires_grad_()
            p_raw = torch.randn((c, h, w), generator=gen).to(dev).requires_grad_()
            opt = torch.optim.Adam([m_raw, p_raw], lr=0.1)
            own = torch.full((min(128, len(src)),), target_class, dtype=torch.long, device=dev)
            for _ in range(int(adaptive_steps)):
                batch = rng.choice(src, size=len(own), replace=False)
                xb = torch.from_numpy(np.ascontiguousarray(x[np.sort(batch)])).to(dev)
                m, pat = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
                logits, feats = _penultimate(model, (1 - m) * xb + m * pat)
                loss = (
                    F.cross_entropy(logits, own)
                    + adaptive_feature_weight
                    * ((feats - mu) ** 2).sum(1).mean()
                    / mu.pow(2).sum().clamp_min(1e-12)
                    + adaptive_mask_weight * m.sum()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.mask_ = torch.sigmoid(m_raw).detach().cpu().numpy().astype(np.float32)
            self.pattern_ = torch.sigmoid(p_raw).detach().cpu().numpy().astype(np.float32)
        finally:
            for p, g in zip(params, grads, strict=True):
                p.requires_grad_(g)
            model.train(was_training)
