"""Baseline detectors of Razmi & Xiong's comparison: OD (centroid distance) and MagNet.

- ``OD``: distance of a point to the centroid of its labelled class (centroids of the fit data),
  then the same GMM decision as CAE+ (the authors' ``mean_outlier_detector``, after Paudice et al.).
- ``MagNet`` (Meng & Chen, adapted to poisoning as in the paper): two distinct denoising
  auto-encoders trained on the (possibly contaminated) data; detector I = L2 error
  ``mean((x - x_hat)^2)`` of the average-pooling AE, detector II = L1 error ``mean(|x - x_hat|)``
  of the AE without pooling; a GMM decision on each error, a point is flagged when either flags it.
  ``reform(X)`` returns the reformer's reconstructions (MagNet + reformer: the kept points are
  replaced by them before retraining); the reformer is the first AE, as in MagNet for MNIST.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F

from poisondetect.detectors.cae import check_features, check_labels, combine, model_input
from poisondetect.detectors.decision import gmm_decision
from poisondetect.detectors.nets import batched_apply, build_autoencoder, fit_loop, seeded
from poisondetect.errors import PoisonDetectError
from poisondetect.runtime import pick_device


class OD:
    """Centroid-based outlier detector: ``score = ||x - centroid[y]||_2`` with one centroid per
    class, the mean of the fit data's points carrying that label."""

    def __init__(self, *, n_classes: int = 2, seed: int = 0, device: str = "auto") -> None:
        self.n_classes, self.seed, self.device = n_classes, seed, device  # device: unused (numpy)

    def fit(self, X: np.ndarray, y: np.ndarray) -> OD:
        x = check_features(X).reshape(len(X), -1).astype(np.float64)
        yy = check_labels(y, len(x), self.n_classes)
        missing = [c for c in range(self.n_classes) if not np.any(yy == c)]
        if missing:
            raise PoisonDetectError(
                f"OD.fit: no training point has label(s) {missing}; need every class"
            )
        self.centroids_ = np.stack([x[yy == c].mean(axis=0) for c in range(self.n_classes)])
        return self

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Euclidean distance to the centroid of each point's (given) label."""
        if not hasattr(self, "centroids_"):
            raise PoisonDetectError("OD is not fitted yet; call fit(X, y) first")
        x = check_features(X).reshape(len(X), -1).astype(np.float64)
        if x.shape[1] != self.centroids_.shape[1]:
            raise PoisonDetectError(
                f"OD: X has {x.shape[1]} features, the fit data had {self.centroids_.shape[1]}"
            )
        yy = check_labels(y, len(x), self.n_classes)
        return np.linalg.norm(x - self.centroids_[yy], axis=1)

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """GMM decision on the scores (True = poisoned)."""
        return gmm_decision(self.score_samples(X, y), seed=self.seed)


class MagNet:
    """MagNet detector (two auto-encoders, L2 and L1 reconstruction errors, union of GMM flags) and
    reformer.

    The two auto-encoders have different architectures (``archs``; MagNet's MNIST detectors:
    ``conv_avgpool`` = Conv-AvgPool-Conv | Conv-UpSample-Conv-Conv, and ``conv_nopool`` =
    Conv | Conv-Conv) and different seeds (``seed``, ``seed + 1``) -- the authors' code used a copy
    of the first model. Each is trained as a denoising AE (MagNet): input ``clip(x + noise * N(0,1))``
    with a fixed seeded noise draw, target ``x``; MSE; Adam; ``epochs`` = 300 (the paper's change from
    MagNet's 100); the best weights on a seeded ``val_fraction`` hold-out are kept.
    With ``archs=("dense", "dense")`` the two AEs differ by ``dense_hidden`` / ``dense_latent``.

    ``score_samples`` (for AUROC) = ``e1/||e1|| + e2/||e2||``, the sum of the two errors each
    normalised by its L2 norm over the points scored; ``predict`` = ``gmm(e1) | gmm(e2)``.
    """

    def __init__(
        self,
        *,
        archs: Sequence[str] = ("conv_avgpool", "conv_nopool"),
        norms: Sequence[int] = (2, 1),
        image_shape: Sequence[int] | None = None,
        filters: int = 3,
        dense_hidden: Sequence[Sequence[int]] = ((256,), (128,)),
        dense_latent: Sequence[int] = (64, 32),
        noise: float = 0.1,
        epochs: int = 300,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.33,
        patience: int | None = None,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if len(archs) != 2 or len(norms) != 2 or any(p not in (1, 2) for p in norms):
            raise PoisonDetectError("MagNet needs two archs and two norms, each norm 1 or 2")
        configs = [
            (a, tuple(h) if a == "dense" else None, lat if a == "dense" else None)
            for a, h, lat in zip(archs, dense_hidden, dense_latent, strict=True)
        ]
        if configs[0] == configs[1]:
            raise PoisonDetectError(
                f"MagNet's two auto-encoders must differ in architecture, got twice {configs[0]}"
            )
        if noise < 0:
            raise PoisonDetectError(f"noise must be >= 0, got {noise}")
        self.archs, self.norms, self.image_shape, self.filters = (
            tuple(archs),
            tuple(norms),
            image_shape,
            filters,
        )
        self.dense_hidden = tuple(tuple(h) for h in dense_hidden)
        self.dense_latent = tuple(dense_latent)
        self.noise, self.epochs, self.batch_size, self.lr = noise, epochs, batch_size, lr
        self.val_fraction, self.patience = val_fraction, patience
        self.seed, self.device = seed, device

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> MagNet:
        """Train both auto-encoders on ``X`` (labels are ignored)."""
        x = check_features(X)
        self.device_ = pick_device(self.device)
        self.nets_ = []
        self.histories_ = []
        for i, arch in enumerate(self.archs):
            seed = self.seed + i
            xi = model_input(x, arch, self.image_shape)
            rng = np.random.default_rng(seed)
            noisy = np.clip(xi + self.noise * rng.standard_normal(xi.shape), 0.0, 1.0).astype(
                np.float32
            )
            with seeded(seed, self.device_):
                net = build_autoencoder(
                    arch,
                    xi.shape[1:],
                    filters=self.filters,
                    hidden=self.dense_hidden[i],
                    latent=self.dense_latent[i],
                )
            hist = fit_loop(
                net,
                lambda m, xn, xc: F.mse_loss(m(xn), xc),
                [noisy, xi],
                seed=seed,
                batch_size=self.batch_size,
                epochs=self.epochs,
                lr=self.lr,
                device=self.device_,
                val_fraction=self.val_fraction,
                patience=self.patience,
                desc=f"MagNet-AE{i + 1}",
            )
            self.nets_.append(net)
            self.histories_.append(hist)
        return self

    def _check(self) -> None:
        if not hasattr(self, "nets_"):
            raise PoisonDetectError("MagNet is not fitted yet; call fit(X) first")

    def errors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(e1, e2)``: ``mean(|x - ae_i(x)|^p_i)`` per point for both auto-encoders."""
        self._check()
        x = check_features(X)
        out = []
        for arch, net, p in zip(self.archs, self.nets_, self.norms, strict=True):
            xi = model_input(x, arch, self.image_shape)
            net.eval()
            e = batched_apply(
                lambda xb, net=net, p=p: (xb - net(xb)).abs().pow(p).flatten(1).mean(1),
                [xi],
                batch_size=1024,
                device=self.device_,
            )
            out.append(e.astype(np.float64))
        return out[0], out[1]

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``e1/||e1|| + e2/||e2||`` (a ranking score for AUROC; the decision is ``predict``)."""
        return 2.0 * combine(*self.errors(X), 0.5)

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Union of the GMM decisions on the two errors (True = poisoned)."""
        e1, e2 = self.errors(X)
        return gmm_decision(e1, seed=self.seed) | gmm_decision(e2, seed=self.seed)

    def reform(self, X: np.ndarray) -> np.ndarray:
        """The reformer's (first auto-encoder's) reconstructions, clipped to [0, 1], shaped as ``X``."""
        self._check()
        x = model_input(check_features(X), self.archs[0], self.image_shape)
        net = self.nets_[0]
        net.eval()
        out = batched_apply(
            lambda xb: net(xb).clamp(0.0, 1.0), [x], batch_size=1024, device=self.device_
        )
        return out.reshape(np.shape(X)).astype(np.float32)
