"""Sample-level detectors of Razmi & Xiong: RAE, CAE and CAE+.

Inputs are features ``X`` of shape ``(N, D)`` (flattened images, values in ``[0, 1]``) or images
``(N, C, H, W)``, and labels ``y`` in ``{0, 1}``. Scores: higher = more likely poisoned.

- ``RAE``: reconstruction auto-encoder; score ``RE`` = L1 norm of ``x - x_hat`` per point.
- ``CAE``: auto-encoder whose latent code also feeds a classifier (Dense(128) + dropout -> 2
  classes), trained on reconstruction + cross-entropy with early stopping (best validation loss);
  score = Eq. 3 of the paper, ``alpha * RE_cae/||RE_cae|| + (1-alpha) * CE/||CE||``.
- ``CAEPlus``: an RAE and a CAE; score = Eq. 4, ``alpha * RE_rae/||RE_rae|| + (1-alpha) * CE_cae/||CE_cae||``
  where the norms are taken over the batch being scored (``decision.combine``).

Architecture (paper, Sect. 4.1, and the authors' code): 3x3 convolutions with 3 filters, sigmoid
activations; MNIST/Fashion-MNIST: Conv-MaxPool-Conv | Conv-UpSample-Conv-Conv(C) (``arch="conv"``);
CIFAR-10: Conv | Conv-Conv(C) (``arch="conv_nopool"``); ``arch="dense"`` for non-image features.
Reconstruction loss is the mean squared error (as the authors' Keras code; the L1 norm is only the
score); Adam (lr 1e-3), batch 256; a seeded 33% validation split whose best-loss weights are kept
(the authors' ``validation_split=0.33`` + ``ModelCheckpoint(save_best_only=True)``).

All three follow the detector protocol of ``detectors.base``: the constructor stores its parameters,
``fit`` validates them and builds the networks, fitted attributes end in ``_``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poisondetect.checks import check_features, check_fitted, check_labels
from poisondetect.detectors.base import SampleDetector, keyword_init
from poisondetect.detectors.decision import check_alpha, combine
from poisondetect.detectors.nets import (
    build_autoencoder,
    glorot_init,
    latent_size,
    make_activation,
    model_input,
)
from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import batched_apply, fit_loop, seeded
from poisondetect.runtime import pick_device

# Parameter groups, declared once (each detector's constructor takes them as keyword arguments):
# the auto-encoders' architecture and training, the CAE's classifier head, the run settings.
AUTOENCODER = dict(
    arch="conv",  # conv | conv_avgpool | conv_nopool | dense (nets.build_autoencoder)
    image_shape=None,  # (C, H, W) of flat features; None = inferred (square, 1 or 3 channels)
    filters=3,  # conv filters
    hidden=(256,),  # dense only: hidden sizes
    latent=64,  # dense only: code size
    batch_size=256,
    lr=1e-3,  # Adam
    val_fraction=0.33,  # seeded hold-out whose best-loss weights are kept (0: none)
)
HEAD = dict(
    head_units=128, head_activation="sigmoid", dropout_in=0.25, dropout_hidden=0.5, n_classes=2
)
RUN = dict(seed=0, device="auto")


def _build_and_train(det, seed: int, input_shape, wrap, loss_fn, tensors, desc: str) -> None:
    """Build ``wrap(auto-encoder)`` seeded with ``seed`` and train it with the detector's settings
    (the one path of RAE and CAE); sets ``device_``, ``net_`` and ``history_``."""
    det.device_ = pick_device(det.device)
    with seeded(seed, det.device_):
        ae = build_autoencoder(
            det.arch, input_shape, filters=det.filters, hidden=det.hidden, latent=det.latent
        )
        det.net_ = wrap(ae)
    det.history_ = fit_loop(
        det.net_,
        loss_fn,
        tensors,
        seed=seed,
        batch_size=det.batch_size,
        epochs=det.epochs,
        lr=det.lr,
        device=det.device_,
        val_fraction=det.val_fraction,
        patience=det.patience,
        desc=desc,
    )


def _reconstruction_loss(m: nn.Module, x_in: torch.Tensor, x_target: torch.Tensor):
    return F.mse_loss(m(x_in), x_target)


# ----------------------------------------------------------------------------- RAE


class RAE(SampleDetector):
    """Reconstruction auto-encoder; ``score_samples`` = L1 norm of ``x - x_hat`` per point.

    Trained with Adam on the mean squared error (as the authors), ``epochs`` = 300 by default, with a
    seeded ``val_fraction`` hold-out whose lowest-loss weights are kept (0 disables it) and optional
    early stopping after ``patience`` epochs without improvement. Labels are ignored. With
    ``noise > 0`` it is a denoising auto-encoder (as MagNet's): input ``clip(x + noise * N(0, 1))``
    with a fixed draw seeded by ``seed``, target ``x``.
    """

    __init__ = keyword_init(**AUTOENCODER, epochs=300, patience=None, noise=0.0, **RUN)

    def _input(self, X: np.ndarray) -> np.ndarray:
        return model_input(check_features(X), self.arch, self.image_shape)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RAE:
        """Train on ``X`` (labels are ignored)."""
        if self.noise < 0:
            raise PoisonDetectError(f"noise must be >= 0, got {self.noise}")
        x = self._input(X)
        if self.noise > 0:  # denoising: (noisy input, clean target)
            rng = np.random.default_rng(self.seed)
            noisy = np.clip(x + self.noise * rng.standard_normal(x.shape), 0.0, 1.0)
            tensors = [noisy.astype(np.float32), x]
        else:
            tensors = [x, x]
        self.input_shape_ = x.shape[1:]
        _build_and_train(
            self, self.seed, x.shape[1:], lambda ae: ae, _reconstruction_loss, tensors, "RAE"
        )
        return self

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """Reconstructions ``x_hat``, in the shape of ``X``."""
        check_fitted(self, "net_")
        x = self._input(X)
        self.net_.eval()
        out = batched_apply(self.net_, [x], batch_size=1024, device=self.device_)
        return out.reshape(np.shape(X))

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Reconstruction error ``RE = ||x - x_hat||_1`` per point (float64)."""
        check_fitted(self, "net_")
        x = self._input(X)
        self.net_.eval()
        re = batched_apply(
            lambda xb: (xb - self.net_(xb)).abs().flatten(1).sum(1),
            [x],
            batch_size=1024,
            device=self.device_,
        )
        return re.astype(np.float64)


# ----------------------------------------------------------------------------- CAE


class ClassificationAutoencoder(nn.Module):
    """An auto-encoder plus a classifier head on its (flattened) latent code:
    Flatten -> Dropout(dropout_in) -> Dense(units, activation) -> Dropout(dropout_hidden) -> Dense(n_classes).
    ``forward`` returns ``(x_hat, logits)``."""

    def __init__(
        self,
        autoencoder: nn.Module,
        latent_dim: int,
        *,
        units: int = 128,
        n_classes: int = 2,
        dropout_in: float = 0.25,
        dropout_hidden: float = 0.5,
        activation_name: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout_in),
            nn.Linear(latent_dim, units),
            make_activation(activation_name),
            nn.Dropout(dropout_hidden),
            nn.Linear(units, n_classes),
        )
        glorot_init(self.head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.autoencoder.encode(x)
        x_hat = self.autoencoder.decode(z)
        if x_hat.dim() == 4:  # crop the up-sampled output of odd-sized images
            x_hat = x_hat[..., : x.shape[-2], : x.shape[-1]]
        return x_hat, self.head(z)


def _cae_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
    x_hat, logits = model(xb)
    loss = F.mse_loss(x_hat, xb) + F.cross_entropy(logits, yb)
    return loss, {"accuracy": (logits.argmax(1) == yb).float().mean()}


class CAE(SampleDetector):
    """Classification auto-encoder (paper Sect. 3.1, Fig. 1a).

    Trained on ``MSE(x, x_hat) + CE(classifier(z), y)`` (equal weights, as the authors' Keras
    ``loss=['mse', 'categorical_crossentropy']``) for at most ``epochs`` (100), keeping the weights
    of the epoch with the lowest loss on a seeded ``val_fraction`` hold-out (early stopping; with
    ``patience`` set, training also stops after that many epochs without improvement). Its torch
    stream is ``seed + 1``, so that CAE+ can fit an RAE and a CAE from one seed with different
    initialisations, and a CAE on its own equals the one inside a CAE+ of the same seed.

    Sub-scores ``re`` (L1 reconstruction error) and ``ce`` (per-point cross-entropy of the
    classifier against the given label, dropout off); ``score_samples`` is Eq. 3,
    ``combine(re, ce, alpha)``; ``alpha=0`` scores by the cross-entropy alone.
    """

    __init__ = keyword_init(alpha=0.66, **AUTOENCODER, **HEAD, epochs=100, patience=None, **RUN)

    def _input(self, X: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = model_input(check_features(X), self.arch, self.image_shape)
        return x, check_labels(y, len(x), self.n_classes)

    def fit(self, X: np.ndarray, y: np.ndarray) -> CAE:
        """Train on ``(X, y)``."""
        check_alpha(self.alpha)
        x, yy = self._input(X, y)

        def with_head(ae: nn.Module) -> nn.Module:
            return ClassificationAutoencoder(
                ae,
                latent_size(ae, x.shape[1:]),
                units=self.head_units,
                n_classes=self.n_classes,
                dropout_in=self.dropout_in,
                dropout_hidden=self.dropout_hidden,
                activation_name=self.head_activation,
            )

        _build_and_train(self, self.seed + 1, x.shape[1:], with_head, _cae_loss, [x, yy], "CAE")
        return self

    def _terms(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat, logits = self.net_(xb)
        re = (xb - x_hat).abs().flatten(1).sum(1)
        return re, F.cross_entropy(logits, yb, reduction="none")

    def sub_scores(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """``re`` and ``ce`` per point, un-normalised (float64)."""
        check_fitted(self, "net_")
        x, yy = self._input(X, y)
        self.net_.eval()
        re, ce = batched_apply(self._terms, [x, yy], batch_size=1024, device=self.device_)
        return {"re": re.astype(np.float64), "ce": ce.astype(np.float64)}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of the auxiliary classifier."""
        check_fitted(self, "net_")
        x = model_input(check_features(X), self.arch, self.image_shape)
        self.net_.eval()
        return batched_apply(
            lambda xb: torch.softmax(self.net_(xb)[1], dim=1),
            [x],
            batch_size=1024,
            device=self.device_,
        )

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        """Eq. 3 from the stored sub-scores, with the current ``alpha``."""
        return combine(sub_scores["re"], sub_scores["ce"], self.alpha)

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eq. 3: ``alpha * RE/||RE|| + (1-alpha) * CE/||CE||`` over the points given."""
        return self.score_from(self.sub_scores(X, y))


# ----------------------------------------------------------------------------- CAE+


class CAEPlus(SampleDetector):
    """CAE+ (paper Sect. 3.2, Fig. 1b): an RAE (``rae_epochs``, ``rae_patience``) and a CAE with
    early stopping (``cae_epochs``, ``cae_patience``), trained separately on the same data from one
    ``seed`` (fitted as ``rae_`` and ``cae_``).

    Sub-scores ``re`` (the RAE's L1 error) and ``ce`` (the CAE's cross-entropy), the axes of the
    paper's Fig. 2; ``score_samples`` is Eq. 4, ``combine(re, ce, alpha)``, normalised over the
    points scored together. ``alpha`` acts at scoring time only: ``set_params(alpha=a)`` on a fitted
    CAE+ rescores without refitting.
    """

    __init__ = keyword_init(
        alpha=0.66,
        **AUTOENCODER,
        **HEAD,
        rae_epochs=300,
        cae_epochs=100,
        rae_patience=None,
        cae_patience=None,
        **RUN,
    )

    def fit(self, X: np.ndarray, y: np.ndarray) -> CAEPlus:
        """Train the RAE on ``X`` and the CAE on ``(X, y)``."""
        check_alpha(self.alpha)
        check_labels(y, len(check_features(X)), self.n_classes)
        shared = {k: getattr(self, k) for k in (*AUTOENCODER, *RUN)}
        head = {k: getattr(self, k) for k in HEAD}
        self.rae_ = RAE(**shared, epochs=self.rae_epochs, patience=self.rae_patience).fit(X)
        self.cae_ = CAE(
            **shared, **head, alpha=self.alpha, epochs=self.cae_epochs, patience=self.cae_patience
        ).fit(X, y)
        return self

    def sub_scores(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """``re`` of the RAE and ``ce`` of the CAE per point, un-normalised."""
        check_fitted(self, "cae_")
        return {"re": self.rae_.score_samples(X), "ce": self.cae_.sub_scores(X, y)["ce"]}

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        """Eq. 4 from the stored sub-scores, with the current ``alpha``."""
        return combine(sub_scores["re"], sub_scores["ce"], self.alpha)

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eq. 4: ``alpha * RE_rae/||RE_rae|| + (1-alpha) * CE_cae/||CE_cae||``."""
        return self.score_from(self.sub_scores(X, y))
