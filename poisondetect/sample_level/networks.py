"""The networks (RAEs, CAEs) the sample-level detectors are made of (``detectors.networks``):
each fitted once per cell and train_on, by a ``fit_network`` job (``fit_network``) or once inside a
job that fits several detectors (``NetworkStore``), and shared by the detectors made of it."""

from __future__ import annotations

import logging
import time

import numpy as np

from poisondetect.detectors.networks import network_id
from poisondetect.sample_level.poisoning import fitting_set, load_poisoned

log = logging.getLogger(__name__)

NETWORK_FILE = "nets/{network}_{train_on}.safetensors"  # a network shared by the cell's detectors


class NetworkStore:
    """The fitted networks (RAEs, CAEs) of one cell and train_on: read from the files of the
    cell's ``fit_network`` jobs where there are some, else fitted here, once, and kept for the
    other detectors of the same job."""

    def __init__(self, files: list[str] = ()) -> None:
        from poisondetect.detectors.cae import load_network

        self._fitted: dict[str, object] = {}
        self._files = list(files)
        self._load = load_network

    def get(self, kind: str, settings: dict, x: np.ndarray, y: np.ndarray, device: str):
        nid = network_id(kind, settings)
        if nid not in self._fitted:
            for path in self._files:  # each file says which network it holds
                found, det = self._load(path, device)
                self._fitted[found] = det
            self._files = []
        if nid not in self._fitted:
            self._fitted[nid] = fit_network_on(kind, settings, x, y, device)
        return self._fitted[nid]


def fit_network_on(kind: str, settings: dict, x: np.ndarray, y: np.ndarray, device: str):
    """One RAE or CAE with these settings, fitted on (x, y)."""
    from poisondetect.detectors.cae import CAE, RAE

    t0 = time.perf_counter()
    net = {"rae": RAE, "cae": CAE}[kind](**settings, device=device).fit(x, y)
    log.info("network %s fitted on %d points in %.1fs", network_id(kind, settings), len(y),
             time.perf_counter() - t0)  # fmt: skip
    return net


def fit_network(
    poisoned: str,
    out: str,
    *,
    network: tuple[str, dict],
    train_on: str,
    n_detector_rounds: int,
    device: str,
) -> None:
    """Fit one network (``network`` = (kind, settings), ``detectors.networks``) on the pooled
    first rounds of a cell, for every detector of the cell that is made of it."""
    from poisondetect.detectors.cae import save_network

    kind, settings = network
    x_fit, y_fit = fitting_set(load_poisoned(poisoned), train_on, n_detector_rounds)
    save_network(fit_network_on(kind, settings, x_fit, y_fit, device), out)
