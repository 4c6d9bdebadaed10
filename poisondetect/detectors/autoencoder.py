"""Model-level detector: an auto-encoder on the penultimate activations of the genuine model.

Fit on the genuine model's activations over the trigger set; ``calibrate`` on the honest fine-tune's
activations sets ``Tr = mean(e) + std(e)`` of its per-image reconstruction errors; a suspicious model
is flagged when the mean error of its activations exceeds Tr (El Moadine et al., Eq. 4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisondetect.detectors.nets import DenseAutoencoder, fit_loop
from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path
from poisondetect.runtime import pick_device

log = logging.getLogger(__name__)


STD_FLOOR = 1.0  # per-unit std floor, as a share of the median std of the units that fire


def mean_plus_std(errors: np.ndarray) -> float:
    """The paper's threshold: mean + (population) standard deviation of the per-image errors."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(errors.mean() + errors.std())


class ActivationAutoencoder:
    """Auto-encoder anomaly detector over activation vectors (scikit-learn style).

    ``score_samples(X)`` returns each row's reconstruction MSE; ``decide(X)`` returns the model-level
    verdict (mean error, flagged) against ``threshold_``.
    """

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
        self.hidden = list(hidden)
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.standardize = standardize
        self.std_floor = std_floor
        self.seed = seed
        self.device = device
        self.threshold_: float | None = None

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
            self.net_ = DenseAutoencoder(self.input_dim_, self.hidden, self.latent)
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
    @torch.inference_mode()
    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Per-row reconstruction MSE (higher = further from the genuine model's activations)."""
        data = self._prep(X)
        out = []
        for start in range(0, len(data), 4096):
            xb = data[start : start + 4096]
            out.append(((self.net_(xb) - xb) ** 2).mean(1).numpy())
        return np.concatenate(out).astype(np.float64)

    def calibrate(self, X_honest: np.ndarray) -> float:
        """Set ``threshold_`` = mean + std of the honest fine-tune's per-image errors."""
        self.threshold_ = mean_plus_std(self.score_samples(X_honest))
        return self.threshold_

    def decide(self, X: np.ndarray) -> tuple[float, bool]:
        """Model-level verdict: (mean reconstruction error, error > threshold)."""
        if self.threshold_ is None:
            raise PoisonDetectError("the detector has no threshold: call calibrate() first")
        mean_error = float(self.score_samples(X).mean())
        return mean_error, bool(mean_error > self.threshold_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Per-image flags (error > threshold), scikit-learn style."""
        if self.threshold_ is None:
            raise PoisonDetectError("the detector has no threshold: call calibrate() first")
        return self.score_samples(X) > self.threshold_

    # -- the detector bundle -----------------------------------------------------------------
    def save(self, path: str | Path, description: dict | None = None) -> None:
        """One safetensors file: the auto-encoder weights, the scaler, the threshold and the
        trigger-set description (no pickle anywhere)."""
        from safetensors.torch import save_file

        tensors = {f"ae.{k}": v.contiguous() for k, v in self.net_.state_dict().items()}
        tensors["scaler.mean"] = torch.from_numpy(np.ascontiguousarray(self.mean_))
        tensors["scaler.std"] = torch.from_numpy(np.ascontiguousarray(self.std_))
        meta = {
            "kind": "poisondetect.model_level_detector",
            "input_dim": self.input_dim_,
            "hidden": self.hidden,
            "latent": self.latent,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "standardize": self.standardize,
            "seed": self.seed,
            "threshold": self.threshold_,
            "final_train_mse": self.loss_history_[-1]
            if getattr(self, "loss_history_", None)
            else None,
            "description": description or {},
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"poisondetect": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> ActivationAutoencoder:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PoisonDetectError(f"detector bundle {path} not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["poisondetect"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (KeyError, json.JSONDecodeError, OSError, RuntimeError, Exception) as e:
            raise PoisonDetectError(
                f"{path} is not a valid poisondetect detector bundle ({e}); rebuild it with the "
                "workflow's fit_detector rule"
            ) from e
        if meta.get("kind") != "poisondetect.model_level_detector":
            raise PoisonDetectError(f"{path} is not a model-level detector bundle")
        det = cls(
            latent=meta["latent"],
            hidden=meta["hidden"],
            epochs=meta["epochs"],
            lr=meta["lr"],
            batch_size=meta["batch_size"],
            standardize=meta["standardize"],
            seed=meta["seed"],
            device=device,
        )
        det.input_dim_ = meta["input_dim"]
        det.mean_ = tensors.pop("scaler.mean").numpy()
        det.std_ = tensors.pop("scaler.std").numpy()
        det.net_ = DenseAutoencoder(det.input_dim_, det.hidden, det.latent)
        det.net_.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("ae.")})
        det.net_.eval()
        det.threshold_ = meta["threshold"]
        det.description_ = meta["description"]
        return det
