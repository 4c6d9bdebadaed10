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
from poisondetect.detectors.networks import AUTOENCODER, DEFAULTS, HEAD, RUN, network_id, networks
from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import batched_apply, fit_loop, seeded
from poisondetect.runtime import pick_device

NETWORK_KIND = "poisondetect.sample_network"  # a fitted RAE or CAE shared by detectors


def _train(det, seed: int, net: nn.Module, loss_fn, tensors, desc: str) -> None:
    """Train ``net`` with the detector's settings (the one path of RAE and CAE); sets
    ``net_`` and ``history_``."""
    det.net_ = net
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


def save_network(det, path) -> None:
    """A fitted RAE or CAE (its weights, settings, input shape and history) as one bundle, for
    the detectors of its cell that are made of it (``detectors.networks``)."""
    from poisondetect.bundles import write_bundle

    kind = type(det).__name__.lower()
    settings = {k: v for k, v in det.get_params().items() if k != "device"}
    write_bundle(
        path,
        det.net_.state_dict(),
        {
            "kind": NETWORK_KIND,
            "network": kind,
            "id": network_id(kind, networks(kind, settings)[kind][1]),
            "settings": settings,
            "input_shape": list(det.input_shape_),
            # without wall times: the same fit writes the same bytes
            "history": [{k: v for k, v in rec.items() if k != "seconds"} for rec in det.history_],
        },
    )


def load_network(path, device: str = "auto"):
    """The fitted RAE or CAE saved by ``save_network``, on ``device``; returns (id, detector)."""
    from poisondetect.bundles import read_bundle

    arrays, meta = read_bundle(path, NETWORK_KIND)
    cls = {"rae": RAE, "cae": CAE}[meta["network"]]
    det = cls(**meta["settings"], device=device)
    det.device_ = pick_device(device)
    det.input_shape_ = tuple(meta["input_shape"])
    net = det._network(det.input_shape_)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    det.net_ = net.to(det.device_).eval()
    det.history_ = meta["history"]
    return meta["id"], det


def _adopt(det, fitted) -> None:
    """Take the fitted state of ``fitted`` (an equal network fitted once for the whole cell)."""
    for name in ("device_", "input_shape_", "net_", "history_"):
        setattr(det, name, getattr(fitted, name))


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

    __init__ = keyword_init(**DEFAULTS["rae"])

    def _input(self, X: np.ndarray) -> np.ndarray:
        return model_input(check_features(X), self.arch, self.image_shape)

    def _network(self, input_shape) -> nn.Module:
        """The untrained auto-encoder, initialised from ``seed``."""
        with seeded(self.seed, self.device_):
            return build_autoencoder(
                self.arch, input_shape, filters=self.filters, hidden=self.hidden, latent=self.latent
            )

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, networks: dict | None = None) -> RAE:
        """Train on ``X`` (labels are ignored); or, with ``networks={"rae": fitted}``, take an
        equal RAE already fitted on the same data (``detectors.networks``)."""
        if self.noise < 0:
            raise PoisonDetectError(f"noise must be >= 0, got {self.noise}")
        if networks:
            _adopt(self, networks["rae"])
            return self
        x = self._input(X)
        if self.noise > 0:  # denoising: (noisy input, clean target)
            rng = np.random.default_rng(self.seed)
            noisy = np.clip(x + self.noise * rng.standard_normal(x.shape), 0.0, 1.0)
            tensors = [noisy.astype(np.float32), x]
        else:
            tensors = [x, x]
        self.input_shape_ = x.shape[1:]
        self.device_ = pick_device(self.device)
        net = self._network(x.shape[1:])
        _train(self, self.seed, net, _reconstruction_loss, tensors, "RAE")
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

    __init__ = keyword_init(**DEFAULTS["cae"])

    def _input(self, X: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = model_input(check_features(X), self.arch, self.image_shape)
        return x, check_labels(y, len(x), self.n_classes)

    def _network(self, input_shape) -> nn.Module:
        """The untrained classification auto-encoder, initialised from ``seed + 1``."""
        with seeded(self.seed + 1, self.device_):
            ae = build_autoencoder(
                self.arch, input_shape, filters=self.filters, hidden=self.hidden, latent=self.latent
            )
            return ClassificationAutoencoder(
                ae,
                latent_size(ae, input_shape),
                units=self.head_units,
                n_classes=self.n_classes,
                dropout_in=self.dropout_in,
                dropout_hidden=self.dropout_hidden,
                activation_name=self.head_activation,
            )

    def fit(self, X: np.ndarray, y: np.ndarray, networks: dict | None = None) -> CAE:
        """Train on ``(X, y)``; or, with ``networks={"cae": fitted}``, take an equal CAE already
        fitted on the same data (``detectors.networks``)."""
        check_alpha(self.alpha)
        x, yy = self._input(X, y)
        if networks:
            _adopt(self, networks["cae"])
            return self
        self.input_shape_ = x.shape[1:]
        self.device_ = pick_device(self.device)
        _train(self, self.seed + 1, self._network(x.shape[1:]), _cae_loss, [x, yy], "CAE")
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

    __init__ = keyword_init(**DEFAULTS["cae_plus"])

    def fit(self, X: np.ndarray, y: np.ndarray, networks: dict | None = None) -> CAEPlus:
        """Train the RAE on ``X`` and the CAE on ``(X, y)``; or take them already fitted
        (``networks={"rae": ..., "cae": ...}``, equal networks fitted once for the cell)."""
        check_alpha(self.alpha)
        check_labels(y, len(check_features(X)), self.n_classes)
        networks = networks or {}
        shared = {k: getattr(self, k) for k in (*AUTOENCODER, *RUN)}
        head = {k: getattr(self, k) for k in HEAD}
        rae = RAE(**shared, epochs=self.rae_epochs, patience=self.rae_patience)
        cae = CAE(
            **shared, **head, alpha=self.alpha, epochs=self.cae_epochs, patience=self.cae_patience
        )
        self.rae_ = rae.fit(X, networks={"rae": networks["rae"]} if "rae" in networks else None)
        self.cae_ = cae.fit(X, y, networks={"cae": networks["cae"]} if "cae" in networks else None)
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
