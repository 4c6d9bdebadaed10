"""What the stages of one model-level cell share: the seeds of its stages, the training images the
genuine model M is trained on, and the trigger set (the images every model is evaluated on)."""

from __future__ import annotations

import numpy as np

from poisondetect.seeds import derive_seed, stratified_subset

_STAGE_CODES = {"genuine": 0, "trigger": 11, "new_data": 12}

BUNDLE_KIND = "poisondetect.model_level_detector"  # the audit bundle
STATE_KIND = "poisondetect.model_level_state"  # one detector's fitted state


def stage_seed(seed: int, stage: str) -> int:
    """A seed for one cell-level stage, derived from the cell's seed."""
    return derive_seed(seed, _STAGE_CODES[stage], 0)


def genuine_share(y: np.ndarray, scenario: str, new_data_fraction: float, seed: int) -> np.ndarray:
    """Indices of the training images M is trained on (all of them in the standard scenario)."""
    if scenario == "new_data":
        return stratified_subset(y, new_data_fraction, stage_seed(seed, "new_data"))
    return np.arange(len(y))


def trigger_set(
    ds, max_samples: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trigger set T_s: the test set, or a seeded subsample of it. Returns (indices, x, y)."""
    n = len(ds.y_test)
    if max_samples is None or max_samples >= n:
        idx = np.arange(n)
    else:
        idx = np.sort(
            np.random.default_rng(stage_seed(seed, "trigger")).choice(n, max_samples, replace=False)
        )
    return idx, ds.x_test[idx], ds.y_test[idx]


def cell_of(wildcards) -> dict:
    """A model-level job's cell (dataset, arch, scenario, seed) from its wildcards."""
    return {
        "dataset": wildcards.dataset,
        "arch": wildcards.arch,
        "scenario": wildcards.scenario,
        "seed": int(wildcards.seed),
    }
