"""The auto-encoder on the penultimate activations of the genuine model (El Moadine et al.).

Fit on the genuine model's activations over the trigger set; ``score_samples`` gives each row's
reconstruction error. The model-level detectors ``ae_mean`` (the paper's mean error and threshold
Tr = mean + std of an honest fine-tune's errors, Eq. 4) and ``ae_class`` aggregate these per-image
errors (``poisondetect.detectors.model_level``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisondetect.bundles import read_bundle, write_bundle
from poisondetect.detectors.base import Detector
from poisondetect.detectors.nets import DenseAutoencoder
from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import batched_apply, fit_loop
from poisondetect.runtime import pick_device

log = logging.getLogger(__name__)


AUTOENCODER_KIND = "poisondetect.activation_autoencoder"
STD_FLOOR = 1.0  # per-unit std floor, as a share of the median std of the units that fire


class ActivationAutoencoder(Detector):
    """Auto-encoder over activation vectors (scikit-learn style): ``score_samples(X)`` returns each
    row's reconstruction MSE (higher = further from the genuine model's activations)."""

    def __init__(
        self,
        latent: int = 32,
        hidden: list[int] | tuple[int, ...] = (128,),
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 128,
        standardize: bool = True,
        std_floor: float = STD_FLOOR,
        seed: int = 0,
        device: str = "auto",
    ):
        self.latent = latent
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.standardize = standardize
        self.std_floor = std_floor
        self.seed = seed
        self.device = device

    # -- fitting -----------------------------------------------------------------------------
    def _prep(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.input_dim_:
            raise PoisonDetectError(
                f"activations of width {X.shape[-1]} given to an auto-encoder fitted on width "
                f"{self.input_dim_}: the suspicious model's architecture differs from the genuine one"
            )
        return torch.from_numpy((X - self.mean_) / self.std_)

    def fit(self, X: np.ndarray, y=None) -> ActivationAutoencoder:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise PoisonDetectError(
                f"need a 2-D array of at least 2 activation rows, got {X.shape}"
            )
        dev = pick_device(self.device)
        self.input_dim_ = X.shape[1]
        if self.standardize:
            self.mean_ = X.mean(0)
            std = X.std(0)
            # Units that never (or hardly) fire in the genuine model have a std near 0: floor every
            # unit's scale at std_floor x the median std of the live units, so no unit is amplified
            # beyond a typical one and a unit that wakes up in another model counts finitely.
            live = std[std > 0]  # the median over units that fire (dead units would make it 0)
            floor = self.std_floor * float(np.median(live)) if live.size else 1.0
            self.std_ = np.maximum(std, max(floor, 1e-6)).astype(np.float32)
            log.info(
                "standardising %d activations (%d never fire in the genuine model); std floor %.4g",
                self.input_dim_,
                int((std == 0).sum()),
                floor,
            )
        else:
            self.mean_ = np.zeros(self.input_dim_, np.float32)
            self.std_ = np.ones(self.input_dim_, np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the initial weights
            self.net_ = DenseAutoencoder(self.input_dim_, list(self.hidden), self.latent)
        history = fit_loop(
            self.net_,
            lambda net, xb: nn.functional.mse_loss(net(xb), xb),
            [self._prep(X)],
            seed=self.seed,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr,
            device=dev,
            desc="autoencoder",
        )
        self.loss_history_ = [rec["loss"] for rec in history]
        self.net_.cpu().eval()
        return self

    # -- scoring -----------------------------------------------------------------------------
    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Per-row reconstruction MSE (higher = further from the genuine model's activations)."""
        errors = batched_apply(
            lambda xb: ((self.net_(xb) - xb) ** 2).mean(1), [self._prep(X)], batch_size=4096
        )
        return errors.astype(np.float64)

    # -- the detector bundle -----------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        """The fitted weights and scaler as named arrays (for a safetensors bundle)."""
        out = {f"ae.{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        out["scaler.mean"] = np.asarray(self.mean_)
        out["scaler.std"] = np.asarray(self.std_)
        return out

    def metadata(self) -> dict:
        """Parameters and fit summary, JSON-serialisable (for a safetensors bundle)."""
        return {
            "input_dim": self.input_dim_,
            "hidden": self.hidden,
            "latent": self.latent,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "standardize": self.standardize,
            "std_floor": self.std_floor,
            "seed": self.seed,
            "final_train_mse": self.loss_history_[-1]
            if getattr(self, "loss_history_", None)
            else None,
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, np.ndarray], meta: dict, device: str = "auto"
    ) -> ActivationAutoencoder:
        """The fitted auto-encoder back from ``tensors()`` and ``metadata()``."""
        det = cls(
            latent=meta["latent"],
            hidden=meta["hidden"],
            epochs=meta["epochs"],
            lr=meta["lr"],
            batch_size=meta["batch_size"],
            standardize=meta["standardize"],
            std_floor=meta.get("std_floor", STD_FLOOR),
            seed=meta["seed"],
            device=device,
        )
        det.input_dim_ = meta["input_dim"]
        det.mean_ = np.asarray(tensors["scaler.mean"], dtype=np.float32)
        det.std_ = np.asarray(tensors["scaler.std"], dtype=np.float32)
        det.net_ = DenseAutoencoder(det.input_dim_, list(det.hidden), det.latent)
        det.net_.load_state_dict(
            {
                k[3:]: torch.from_numpy(np.array(v))
                for k, v in tensors.items()
                if k.startswith("ae.")
            }
        )
        det.net_.eval()
        return det

    def save(self, path: str | Path) -> None:
        """One safetensors file with the weights, the scaler and the parameters (no pickle)."""
        write_bundle(path, self.tensors(), {"kind": AUTOENCODER_KIND, **self.metadata()})

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> ActivationAutoencoder:
        tensors, meta = read_bundle(path, AUTOENCODER_KIND)
        return cls.from_tensors(tensors, meta, device=device)
