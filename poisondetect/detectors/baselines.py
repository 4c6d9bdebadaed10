"""Baseline detectors of Razmi & Xiong's comparison: OD (centroid distance) and MagNet.

- ``OD``: distance of a point to the centroid of its labelled class (centroids of the fit data),
  then the same GMM decision as CAE+ (the authors' ``mean_outlier_detector``, after Paudice et al.).
- ``MagNet`` (Meng & Chen, adapted to poisoning as in the paper): two distinct denoising
  auto-encoders trained on the (possibly contaminated) data; detector I = L2 error
  ``mean((x - x_hat)^2)`` of the average-pooling AE, detector II = L1 error ``mean(|x - x_hat|)``
  of the AE without pooling; a GMM decision on each error, a point is flagged when either flags it.
- ``MagNetReformer``: MagNet whose ``repair`` returns the reformer's reconstructions (MagNet +
  reformer: the kept points are replaced by them before retraining); the reformer is the first AE,
  as in MagNet for MNIST.
"""

from __future__ import annotations

import numpy as np

from poisondetect.checks import check_features, check_fitted, check_labels
from poisondetect.detectors.base import SampleDetector, keyword_init
from poisondetect.detectors.cae import RAE
from poisondetect.detectors.decision import combine, gmm_decision
from poisondetect.detectors.nets import model_input
from poisondetect.detectors.networks import DEFAULTS, magnet_archs
from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import batched_apply


class OD(SampleDetector):
    """Centroid-based outlier detector: ``score = ||x - centroid[y]||_2`` with one centroid per
    class, the mean of the fit data's points carrying that label."""

    __init__ = keyword_init(n_classes=2, seed=0)

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
        check_fitted(self, "centroids_")
        x = check_features(X).reshape(len(X), -1).astype(np.float64)
        if x.shape[1] != self.centroids_.shape[1]:
            raise PoisonDetectError(
                f"OD: X has {x.shape[1]} features, the fit data had {self.centroids_.shape[1]}"
            )
        yy = check_labels(y, len(x), self.n_classes)
        return np.linalg.norm(x - self.centroids_[yy], axis=1)


class MagNet(SampleDetector):
    """MagNet detector (two auto-encoders, L2 and L1 reconstruction errors, union of GMM flags).

    The two auto-encoders (RAEs with denoising ``noise``) have different architectures and seeds
    (``seed``, ``seed + 1``) -- the authors' code used a copy of the first model. ``arch`` is the
    task's family of nets: ``conv`` / ``conv_nopool`` give MagNet's MNIST detectors
    (``conv_avgpool`` = Conv-AvgPool-Conv | Conv-UpSample-Conv-Conv, and ``conv_nopool`` =
    Conv | Conv-Conv), ``dense`` two dense AEs differing by ``dense_hidden`` / ``dense_latent``;
    ``archs`` names the two explicitly. Each is trained on ``clip(x + noise * N(0,1))`` (a fixed
    seeded draw) with target ``x``; MSE; Adam; ``epochs`` = 300 (the paper's change from MagNet's
    100); the best weights on a seeded ``val_fraction`` hold-out are kept.

    Sub-scores ``e1``, ``e2`` = ``mean(|x - ae_i(x)|^p_i)`` per point; ``score_samples`` (for AUROC)
    = ``e1/||e1|| + e2/||e2||`` over the points scored; ``predict`` = ``gmm(e1) | gmm(e2)``.
    """

    __init__ = keyword_init(**DEFAULTS["magnet"])

    def _archs(self) -> tuple[str, str]:
        archs = magnet_archs(self.get_params())
        norms = tuple(self.norms)
        if len(archs) != 2 or len(norms) != 2 or any(p not in (1, 2) for p in norms):
            raise PoisonDetectError("MagNet needs two archs and two norms, each norm 1 or 2")
        configs = [
            (a, tuple(h) if a == "dense" else None, lat if a == "dense" else None)
            for a, h, lat in zip(archs, self.dense_hidden, self.dense_latent, strict=True)
        ]
        if configs[0] == configs[1]:
            raise PoisonDetectError(
                f"MagNet's two auto-encoders must differ in architecture, got twice {configs[0]}"
            )
        return archs

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, networks: dict | None = None
    ) -> MagNet:
        """Train both auto-encoders on ``X`` (labels are ignored); or take them already fitted
        (``networks={"ae1": ..., "ae2": ...}``: MagNet and MagNet + reformer share them)."""
        archs = self._archs()
        x = check_features(X)
        self.archs_ = archs
        networks = networks or {}
        settings = {k: getattr(self, k) for k in RAE._get_param_names() if k not in _PER_AE}
        self.autoencoders_ = [
            RAE(
                **settings,
                arch=arch,
                hidden=self.dense_hidden[i],
                latent=self.dense_latent[i],
                seed=self.seed + i,
            ).fit(x, networks={"rae": networks[f"ae{i + 1}"]} if networks else None)
            for i, arch in enumerate(archs)
        ]
        self.nets_ = [ae.net_ for ae in self.autoencoders_]
        self.histories_ = [ae.history_ for ae in self.autoencoders_]
        self.device_ = self.autoencoders_[0].device_
        return self

    def sub_scores(self, X: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``e1``, ``e2``: ``mean(|x - ae_i(x)|^p_i)`` per point for both auto-encoders."""
        check_fitted(self, "nets_")
        x = check_features(X)
        out = {}
        for i, (arch, net, p) in enumerate(zip(self.archs_, self.nets_, self.norms, strict=True)):
            xi = model_input(x, arch, self.image_shape)
            net.eval()
            e = batched_apply(
                lambda xb, net=net, p=p: (xb - net(xb)).abs().pow(p).flatten(1).mean(1),
                [xi],
                batch_size=1024,
                device=self.device_,
            )
            out[f"e{i + 1}"] = e.astype(np.float64)
        return out

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        return 2.0 * combine(sub_scores["e1"], sub_scores["e2"], 0.5)

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``e1/||e1|| + e2/||e2||`` (a ranking score for AUROC; the decision is ``predict``)."""
        return self.score_from(self.sub_scores(X))

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Union of the GMM decisions on the two errors (True = poisoned)."""
        e = self.sub_scores(X)
        return gmm_decision(e["e1"], seed=self.seed) | gmm_decision(e["e2"], seed=self.seed)

    def reform(self, X: np.ndarray) -> np.ndarray:
        """The reformer's (first auto-encoder's) reconstructions, clipped to [0, 1], shaped as ``X``."""
        check_fitted(self, "nets_")
        x = model_input(check_features(X), self.archs_[0], self.image_shape)
        net = self.nets_[0]
        net.eval()
        out = batched_apply(
            lambda xb: net(xb).clamp(0.0, 1.0), [x], batch_size=1024, device=self.device_
        )
        return out.reshape(np.shape(X)).astype(np.float32)


_PER_AE = ("arch", "hidden", "latent", "seed")  # what differs between MagNet's two auto-encoders


class MagNetReformer(MagNet):
    """MagNet + reformer: MagNet's detector, and the kept points replaced by the reformer's
    reconstructions before the target model is retrained."""

    def repair(self, X: np.ndarray) -> np.ndarray:
        return self.reform(X)
