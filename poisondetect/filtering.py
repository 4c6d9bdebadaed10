"""The ``filter`` command: a user's training set through one sample-level detector.

Reads the training set (``.npz`` with ``x``, ``y``; or an image folder / tar archive with two
classes, via ``poisondetect.data``), takes the detector's settings from a workflow config (its
``sample_level.<detector>`` block and the shared ``autoencoders`` settings, schema defaults filled
in), fits and scores with ``sample_level.filter_points`` -- the workflow's own path -- and writes
the per-point CSV atomically.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path


def _load_config(path: str | None) -> dict:
    import yaml

    from poisondetect.config import validate_config

    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise PoisonDetectError(f"--config {path}: file not found") from None
        except yaml.YAMLError as e:
            raise PoisonDetectError(f"--config {path}: not valid YAML ({e})") from None
    return validate_config(raw)


def _two_classes(y: np.ndarray, source: str) -> tuple[np.ndarray, list]:
    classes = np.unique(y)
    if len(classes) != 2:
        raise PoisonDetectError(
            f"{source}: the training set must hold exactly two classes, found"
            f" {len(classes)} ({classes[:5].tolist()}); keep two classes"
        )
    return (y == classes[1]).astype(np.int64), classes.tolist()


def read_training_set(path: str) -> tuple[np.ndarray, np.ndarray, list, np.ndarray | None]:
    """``(x, y in {0, 1}, original class labels, is_poison or None)`` of a user's training set."""
    p = Path(path)
    if not p.exists():
        raise PoisonDetectError(f"--data {path}: not found")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise PoisonDetectError(f"--data {path}: not a readable .npz ({e})") from None
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise PoisonDetectError(
                f"--data {path}: missing array(s) {missing}; save x (features) and y (labels)"
            )
        x, y = arrays["x"], np.asarray(arrays["y"]).ravel()
        if len(x) != len(y):
            raise PoisonDetectError(f"--data {path}: {len(x)} rows in x but {len(y)} labels in y")
        is_poison = arrays.get("is_poison")
        if is_poison is not None and np.shape(is_poison) != (len(y),):
            raise PoisonDetectError(f"--data {path}: is_poison must have one entry per point")
    else:
        from poisondetect.data import read_dataset

        ds = read_dataset("image_folder", p)  # its train split is the training set
        x, y, is_poison = ds.x_train, ds.y_train, None
    y01, classes = _two_classes(y, f"--data {path}")
    if p.suffix != ".npz":
        classes = [ds.classes[int(c)] for c in classes]  # the class folders' names
    return x, y01, classes, (None if is_poison is None else np.asarray(is_poison, bool))


def run_filter(
    data: str,
    out: str,
    *,
    detector: str = "cae_plus",
    config: str | None = None,
    task: str | None = None,
    arch: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """Fit ``detector`` on the training set ``data``, write the per-point CSV ``out`` and return a
    summary (with precision / recall / F1 when the data carry ``is_poison``)."""
    from poisondetect.detectors.nets import infer_image_shape
    from poisondetect.detectors.registry import names
    from poisondetect.metrics import filter_metrics
    from poisondetect.sample_level.stages import filter_points

    cfg = _load_config(config)["sample_level"]
    if detector not in names("sample"):
        raise PoisonDetectError(
            f"--detector {detector!r} is not registered; known: {', '.join(names('sample'))}"
        )
    if task is not None:
        if task not in cfg["tasks"]:
            raise PoisonDetectError(
                f"--task {task!r} is not declared under sample_level.tasks of the config"
            )
        arch = arch or cfg["tasks"][task]["detector_arch"]
    x, y, classes, is_poison = read_training_set(data)
    if arch is None:  # the conv nets for images (or flat square images), else dense
        try:
            if x.ndim != 4:
                infer_image_shape(int(np.prod(x.shape[1:])))
            arch = "conv"
        except PoisonDetectError:
            arch = "dense"
    table = filter_points(
        x,
        y,
        detector=detector,
        params=cfg.get(detector, {}),
        shared=cfg["autoencoders"],
        arch=arch,
        seed=seed,
        device=device,
    )
    table["label"] = np.asarray(classes, dtype=object)[y]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    flagged = table["flagged"].to_numpy()
    summary = {
        "detector": detector,
        "n_points": int(len(y)),
        "n_flagged": int(flagged.sum()),
        "flagged_per_label": {str(c): int(flagged[y == i].sum()) for i, c in enumerate(classes)},
        "arch": arch,
        "seed": seed,
        "out": str(out),
    }
    msg = (
        f"{detector}: flagged {summary['n_flagged']} of {summary['n_points']} points ("
        + ", ".join(f"label {c}: {n}" for c, n in summary["flagged_per_label"].items())
        + f"); per-point scores in {out}"
    )
    if is_poison is not None:
        m = filter_metrics(is_poison, flagged, table["score"].to_numpy())
        summary.update({k: m[k] for k in ("precision", "recall", "f1", "auroc")})
        msg += (
            f"\nagainst is_poison: precision {m['precision']:.3f} recall {m['recall']:.3f}"
            f" F1 {m['f1']:.3f} AUROC {m['auroc']:.3f}"
        )
    summary["message"] = msg
    return summary
