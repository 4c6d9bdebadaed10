"""Sample-level detectors of Razmi & Xiong: RAE, CAE and CAE+.

Inputs are features ``X`` of shape ``(N, D)`` (flattened images, values in ``[0, 1]``) or images
``(N, C, H, W)``, and labels ``y`` in ``{0, 1}``. Scores: higher = more likely poisoned.

- ``RAE``: reconstruction auto-encoder; score ``RE`` = L1 norm of ``x - x_hat`` per point.
- ``CAE``: auto-encoder whose latent code also feeds a classifier (Dense(128) + dropout -> 2
  classes), trained on reconstruction + cross-entropy with early stopping (best validation loss);
  score = Eq. 3 of the paper, ``alpha * RE_cae/||RE_cae|| + (1-alpha) * CE/||CE||``.
- ``CAEPlus``: an RAE and a CAE; score = Eq. 4, ``alpha * RE_rae/||RE_rae|| + (1-alpha) * CE_cae/||CE_cae||``
  where the norms are taken over the batch being scored (``combine``).

Architecture (paper, Sect. 4.1, and the authors' code): 3x3 convolutions with 3 filters, sigmoid
activations; MNIST/Fashion-MNIST: Conv-MaxPool-Conv | Conv-UpSample-Conv-Conv(C) (``arch="conv"``);
CIFAR-10: Conv | Conv-Conv(C) (``arch="conv_nopool"``); ``arch="dense"`` for non-image features.
Reconstruction loss is the mean squared error (as the authors' Keras code; the L1 norm is only the
score); Adam (lr 1e-3), batch 256; a seeded 33% validation split whose best-loss weights are kept
(the authors' ``validation_split=0.33`` + ``ModelCheckpoint(save_best_only=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poisondetect.detectors.decision import gmm_decision
from poisondetect.detectors.nets import (
    batched_apply,
    build_autoencoder,
    fit_loop,
    glorot_init,
    latent_size,
    make_activation,
    seeded,
)
from poisondetect.errors import PoisonDetectError
from poisondetect.runtime import pick_device

IMAGE_ARCHS = ("conv", "conv_avgpool", "conv_nopool")


# ----------------------------------------------------------------------------- input checks


def check_features(X: np.ndarray, name: str = "X") -> np.ndarray:
    """``X`` as float32 ``(N, D)`` or ``(N, C, H, W)``, finite, values in ``[0, 1]``."""
    x = np.asarray(X, dtype=np.float32)
    if x.ndim not in (2, 4):
        raise PoisonDetectError(
            f"{name} must be (N, D) features or (N, C, H, W) images, got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise PoisonDetectError(f"{name} contains NaN or infinite values")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise PoisonDetectError(
            f"{name} must hold pixels in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]; rescale the data"
        )
    return x


def check_labels(y: np.ndarray | None, n: int, n_classes: int = 2, name: str = "y") -> np.ndarray:
    """``y`` as int64 ``(n,)`` with values in ``[0, n_classes)``."""
    if y is None:
        raise PoisonDetectError(f"{name} is required: this detector uses the labels")
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise PoisonDetectError(f"{name} must have shape ({n},) to match X, got {arr.shape}")
    if arr.size and (
        not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0 or arr.max() >= n_classes
    ):
        raise PoisonDetectError(
            f"{name} must hold integer labels in [0, {n_classes}), got {np.unique(arr)[:5]}"
        )
    return arr.astype(np.int64)


def infer_image_shape(dim: int) -> tuple[int, int, int]:
    """``(1, s, s)`` when ``dim = s*s``, ``(3, s, s)`` when ``dim = 3*s*s``; else an error."""
    s = math.isqrt(dim)
    if s * s == dim:
        return (1, s, s)
    s = math.isqrt(dim // 3)
    if dim % 3 == 0 and 3 * s * s == dim:
        return (3, s, s)
    raise PoisonDetectError(
        f"cannot tell the image shape of {dim} features; pass image_shape=(C, H, W) or use arch='dense'"
    )


def model_input(x: np.ndarray, arch: str, image_shape: Sequence[int] | None) -> np.ndarray:
    """Reshape checked features for an architecture: images for conv archs, flat for dense."""
    n = len(x)
    if arch == "dense":
        return x.reshape(n, -1)
    if arch not in IMAGE_ARCHS:
        raise PoisonDetectError(f"arch {arch!r} is unknown; use one of {[*IMAGE_ARCHS, 'dense']}")
    if x.ndim == 4:
        if image_shape is not None and tuple(image_shape) != x.shape[1:]:
            raise PoisonDetectError(
                f"image_shape {tuple(image_shape)} does not match X {x.shape[1:]}"
            )
        return x
    shape = (
        tuple(int(s) for s in image_shape)
        if image_shape is not None
        else infer_image_shape(x.shape[1])
    )
    if math.prod(shape) != x.shape[1]:
        raise PoisonDetectError(f"image_shape {shape} does not hold {x.shape[1]} features")
    return x.reshape(n, *shape)


def combine(re: np.ndarray, ce: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * re/||re||_2 + (1-alpha) * ce/||ce||_2`` (a zero vector stays zero), as the authors'
    code: each term is normalised by its L2 norm over the points scored together."""
    if not 0.0 <= alpha <= 1.0:
        raise PoisonDetectError(f"alpha must be in [0, 1], got {alpha}")
    re, ce = np.asarray(re, dtype=np.float64), np.asarray(ce, dtype=np.float64)
    if re.shape != ce.shape or re.ndim != 1:
        raise PoisonDetectError(f"re {re.shape} and ce {ce.shape} must be 1-D of equal length")

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    return alpha * unit(re) + (1.0 - alpha) * unit(ce)


def _check_fitted(obj: object, attr: str) -> None:
    if not hasattr(obj, attr):
        raise PoisonDetectError(f"{type(obj).__name__} is not fitted yet; call fit(X, y) first")


# ----------------------------------------------------------------------------- RAE


class RAE:
    """Reconstruction auto-encoder; ``score_samples`` = L1 norm of ``x - x_hat`` per point.

    Trained with Adam on the mean squared error (as the authors), ``epochs`` = 300 by default, with a
    seeded ``val_fraction`` hold-out whose lowest-loss weights are kept (0 disables it) and optional
    early stopping after ``patience`` epochs without improvement.
    """

    def __init__(
        self,
        *,
        arch: str = "conv",
        image_shape: Sequence[int] | None = None,
        filters: int = 3,
        hidden: Sequence[int] = (256,),
        latent: int = 64,
        epochs: int = 300,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.33,
        patience: int | None = None,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.arch, self.image_shape, self.filters = arch, image_shape, filters
        self.hidden, self.latent = tuple(hidden), latent
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.val_fraction, self.patience = val_fraction, patience
        self.seed, self.device = seed, device

    def _input(self, X: np.ndarray) -> np.ndarray:
        return model_input(check_features(X), self.arch, self.image_shape)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RAE:
        """Train on ``X`` (labels are ignored)."""
        x = self._input(X)
        self.device_ = pick_device(self.device)
        with seeded(self.seed, self.device_):
            self.net_ = build_autoencoder(
                self.arch, x.shape[1:], filters=self.filters, hidden=self.hidden, latent=self.latent
            )
        self.input_shape_ = x.shape[1:]
        self.history_ = fit_loop(
            self.net_,
            lambda m, xb: F.mse_loss(m(xb), xb),
            [x],
            seed=self.seed,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr,
            device=self.device_,
            val_fraction=self.val_fraction,
            patience=self.patience,
            desc="RAE",
        )
        return self

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """Reconstructions ``x_hat``, in the shape of ``X``."""
        _check_fitted(self, "net_")
        x = self._input(X)
        self.net_.eval()
        out = batched_apply(self.net_, [x], batch_size=1024, device=self.device_)
        return out.reshape(np.shape(X))

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Reconstruction error ``RE = ||x - x_hat||_1`` per point (float64)."""
        _check_fitted(self, "net_")
        x = self._input(X)
        self.net_.eval()
        re = batched_apply(
            lambda xb: (xb - self.net_(xb)).abs().flatten(1).sum(1),
            [x],
            batch_size=1024,
            device=self.device_,
        )
        return re.astype(np.float64)

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """GMM decision on the scores (True = poisoned)."""
        return gmm_decision(self.score_samples(X, y), seed=self.seed)


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


class CAE:
    """Classification auto-encoder (paper Sect. 3.1, Fig. 1a).

    Trained on ``MSE(x, x_hat) + CE(classifier(z), y)`` (equal weights, as the authors' Keras
    ``loss=['mse', 'categorical_crossentropy']``) for at most ``epochs`` (100), keeping the weights
    of the epoch with the lowest loss on a seeded ``val_fraction`` hold-out (early stopping; with
    ``patience`` set, training also stops after that many epochs without improvement).

    ``score_terms(X, y) -> (RE_cae, CE)``: L1 reconstruction error and per-point cross-entropy of the
    classifier against the given label (dropout off). ``score_samples`` is Eq. 3,
    ``combine(RE_cae, CE, alpha)``; ``alpha=0`` scores by the cross-entropy alone.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.66,
        arch: str = "conv",
        image_shape: Sequence[int] | None = None,
        filters: int = 3,
        hidden: Sequence[int] = (256,),
        latent: int = 64,
        head_units: int = 128,
        head_activation: str = "sigmoid",
        dropout_in: float = 0.25,
        dropout_hidden: float = 0.5,
        n_classes: int = 2,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.33,
        patience: int | None = None,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise PoisonDetectError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.arch, self.image_shape, self.filters = alpha, arch, image_shape, filters
        self.hidden, self.latent = tuple(hidden), latent
        self.head_units, self.head_activation = head_units, head_activation
        self.dropout_in, self.dropout_hidden, self.n_classes = dropout_in, dropout_hidden, n_classes
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.val_fraction, self.patience = val_fraction, patience
        self.seed, self.device = seed, device

    def _input(self, X: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = model_input(check_features(X), self.arch, self.image_shape)
        return x, check_labels(y, len(x), self.n_classes)

    def fit(self, X: np.ndarray, y: np.ndarray) -> CAE:
        """Train on ``(X, y)``."""
        x, yy = self._input(X, y)
        self.device_ = pick_device(self.device)
        with seeded(self.seed, self.device_):
            ae = build_autoencoder(
                self.arch, x.shape[1:], filters=self.filters, hidden=self.hidden, latent=self.latent
            )
            self.net_ = ClassificationAutoencoder(
                ae,
                latent_size(ae, x.shape[1:]),
                units=self.head_units,
                n_classes=self.n_classes,
                dropout_in=self.dropout_in,
                dropout_hidden=self.dropout_hidden,
                activation_name=self.head_activation,
            )
        self.history_ = fit_loop(
            self.net_,
            _cae_loss,
            [x, yy],
            seed=self.seed,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr,
            device=self.device_,
            val_fraction=self.val_fraction,
            patience=self.patience,
            desc="CAE",
        )
        return self

    def _terms(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat, logits = self.net_(xb)
        re = (xb - x_hat).abs().flatten(1).sum(1)
        return re, F.cross_entropy(logits, yb, reduction="none")

    def score_terms(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(RE_cae, CE)`` per point, un-normalised (float64)."""
        _check_fitted(self, "net_")
        x, yy = self._input(X, y)
        self.net_.eval()
        re, ce = batched_apply(self._terms, [x, yy], batch_size=1024, device=self.device_)
        return re.astype(np.float64), ce.astype(np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of the auxiliary classifier."""
        _check_fitted(self, "net_")
        x = model_input(check_features(X), self.arch, self.image_shape)
        self.net_.eval()
        return batched_apply(
            lambda xb: torch.softmax(self.net_(xb)[1], dim=1),
            [x],
            batch_size=1024,
            device=self.device_,
        )

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eq. 3: ``alpha * RE/||RE|| + (1-alpha) * CE/||CE||`` over the points given."""
        return combine(*self.score_terms(X, y), self.alpha)

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """GMM decision on the scores (True = poisoned)."""
        return gmm_decision(self.score_samples(X, y), seed=self.seed)


# ----------------------------------------------------------------------------- CAE+


class CAEPlus:
    """CAE+ (paper Sect. 3.2, Fig. 1b): an RAE (``rae_epochs``) and a CAE with early stopping
    (``cae_epochs``), trained separately on the same data (seeds ``seed`` and ``seed + 1``).

    ``score_terms(X, y) -> (RE_rae, CE_cae)``; ``score_samples`` is Eq. 4,
    ``combine(RE_rae, CE_cae, alpha)``, normalised over the points scored together.
    """

    def __init__(
        self,
        alpha: float = 0.66,
        *,
        arch: str = "conv",
        image_shape: Sequence[int] | None = None,
        filters: int = 3,
        hidden: Sequence[int] = (256,),
        latent: int = 64,
        head_units: int = 128,
        head_activation: str = "sigmoid",
        dropout_in: float = 0.25,
        dropout_hidden: float = 0.5,
        n_classes: int = 2,
        rae_epochs: int = 300,
        cae_epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.33,
        rae_patience: int | None = None,
        cae_patience: int | None = None,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise PoisonDetectError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.seed, self.device = alpha, seed, device
        shared = dict(
            arch=arch,
            image_shape=image_shape,
            filters=filters,
            hidden=hidden,
            latent=latent,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            device=device,
        )
        self.rae = RAE(**shared, epochs=rae_epochs, patience=rae_patience, seed=seed)
        self.cae = CAE(
            **shared,
            alpha=alpha,
            head_units=head_units,
            head_activation=head_activation,
            dropout_in=dropout_in,
            dropout_hidden=dropout_hidden,
            n_classes=n_classes,
            epochs=cae_epochs,
            patience=cae_patience,
            seed=seed + 1,
        )

    def fit(self, X: np.ndarray, y: np.ndarray) -> CAEPlus:
        """Train the RAE on ``X`` and the CAE on ``(X, y)``."""
        check_labels(y, len(check_features(X)), self.cae.n_classes)
        self.rae.fit(X)
        self.cae.fit(X, y)
        self.fitted_ = True
        return self

    def score_terms(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(RE_rae, CE_cae)`` per point, un-normalised (the axes of the paper's Fig. 2)."""
        _check_fitted(self, "fitted_")
        return self.rae.score_samples(X), self.cae.score_terms(X, y)[1]

    def score_samples(self, X: np.ndarray, y: np.ndarray, alpha: float | None = None) -> np.ndarray:
        """Eq. 4: ``alpha * RE_rae/||RE_rae|| + (1-alpha) * CE_cae/||CE_cae||`` (``alpha`` defaults
        to the constructor's)."""
        return combine(*self.score_terms(X, y), self.alpha if alpha is None else alpha)

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """GMM decision on the scores (True = poisoned)."""
        return gmm_decision(self.score_samples(X, y), seed=self.seed)
