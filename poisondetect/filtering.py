"""The ``filter`` command: a user's training set through one sample-level detector.

Reads the training set (``.npz`` with ``x``, ``y``; or an image folder / tar archive with two
classes, via ``poisondetect.data``), takes the detector's settings from a workflow config (its
``sample_level.<detector>`` block and the shared ``autoencoders`` settings, schema defaults filled
in), fits and scores with ``filter_points`` -- the workflow's own path (``sample_level.filters``) -- and writes
the per-point CSV atomically. The training set is read within the config's ``limits`` (see
``poisondetect.limits``) before torch is imported: a file that is not what it claims to be is
refused in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from poisondetect.archives import read_npz
from poisondetect.errors import PoisonDetectError, short_repr
from poisondetect.io import atomic_path, check_output_path
from poisondetect.limits import (
    Limits,
    check_regular_file,
    configured_limits,
    describe_head,
    kind_of,
    read_head,
    resolve,
)

if TYPE_CHECKING:
    import pandas as pd


def load_config(path: str | None) -> dict:
    """The validated config of ``--config path`` (schema defaults if None)."""
    from poisondetect.config import read_config_file, validate_config

    raw = read_config_file(path, label=f"--config {path}") if path is not None else {}
    return validate_config(raw)


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> np.ndarray:
    """``y`` as int64 once ``x`` is numeric and finite and ``y`` holds integer labels (integers, or
    integer-valued finite floats); one line naming ``source`` (``--data ...``) otherwise."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise PoisonDetectError(
            f"{source}: x holds {x.dtype} values, not numbers; save x as a numeric array (e.g. "
            "float32 features, or uint8 / float images)"
        )
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise PoisonDetectError(
            f"{source}: x has shape {short_repr(x.shape)}; expected (N, D) features or "
            "(N, C, H, W) images with N >= 1"
        )
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        if bad:
            raise PoisonDetectError(
                f"{source}: x holds NaN or infinite values on {bad} of {len(x)} rows; remove or "
                "repair those points"
            )
    if y.dtype.kind == "f":
        finite = np.isfinite(y)
        if not finite.all():
            raise PoisonDetectError(
                f"{source}: y holds NaN or infinite labels on {int(np.count_nonzero(~finite))} "
                f"of {len(y)} points; labels must be integers"
            )
        if not np.array_equal(y, np.round(y)) or np.abs(y).max(initial=0) > 2**53:
            raise PoisonDetectError(
                f"{source}: y holds non-integer labels (e.g. {short_repr(y[y != np.round(y)][:1].tolist())}); "
                "labels must be integers (class indices)"
            )
    elif y.dtype.kind not in "biu":
        raise PoisonDetectError(
            f"{source}: y holds {y.dtype} values; labels must be integers (class indices)"
        )
    return y.astype(np.int64)


def _two_classes(y: np.ndarray, source: str) -> tuple[np.ndarray, list]:
    classes = np.unique(y)
    if len(classes) != 2:
        raise PoisonDetectError(
            f"{source}: the training set must hold exactly two classes, found"
            f" {len(classes)} ({classes[:5].tolist()}); keep two classes"
        )
    return (y == classes[1]).astype(np.int64), classes.tolist()


def read_training_set(
    path: str, limits: Limits | Mapping | None = None
) -> tuple[np.ndarray, np.ndarray, list, np.ndarray | None]:
    """``(x, y in {0, 1}, original class labels, is_poison or None)`` of a user's training set:
    an ``.npz`` (told by its name, checked by its first bytes), else an image folder or a tar
    archive of one. Read within ``limits`` (default: ``poisondetect.limits.current_limits()``)."""
    p = Path(path)
    limits = resolve(limits)
    if not p.exists():
        raise PoisonDetectError(f"--data {path}: not found")
    if not p.is_dir():  # a FIFO or a device is refused at once, naming --data
        check_regular_file(p, f"--data {path}")
    if p.is_file() and p.suffix != ".npz" and kind_of(read_head(p)) in ("zip", "npy"):
        raise PoisonDetectError(
            f"--data {path}: the file is {describe_head(read_head(p))}: name it .npz if it holds "
            "x and y saved with numpy.savez, or give an image folder or a tar archive of one"
        )
    if p.suffix == ".npz":
        arrays = read_npz(p, ["x", "y", "is_poison"], limits=limits, label=f"--data {path}")
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise PoisonDetectError(
                f"--data {path}: missing array(s) {missing}; save x (features) and y (labels)"
            )
        x, y = arrays["x"], np.asarray(arrays["y"]).ravel()
        if np.ndim(x) == 0 or len(x) != len(y):
            raise PoisonDetectError(
                f"--data {path}: {len(x) if np.ndim(x) else 'no'} rows in x but {len(y)} labels "
                "in y; save one label per row of x"
            )
        y = _check_arrays(x, y, f"--data {path}")
        is_poison = arrays.get("is_poison")
        if is_poison is not None and np.shape(is_poison) != (len(y),):
            raise PoisonDetectError(f"--data {path}: is_poison must have one entry per point")
        if is_poison is not None and not (
            np.asarray(is_poison).dtype.kind in "biuf" and np.isin(is_poison, (0, 1)).all()
        ):
            raise PoisonDetectError(
                f"--data {path}: is_poison must hold booleans (or 0 and 1), one per point"
            )
    else:
        from poisondetect.data import read_dataset

        ds = read_dataset("image_folder", p, limits=limits)  # its train split is the training set
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
    limit_overrides: list[str] | None = None,
) -> dict:
    """Fit ``detector`` on the training set ``data``, write the per-point CSV ``out`` and return a
    summary (with precision / recall / F1 when the data carry ``is_poison``).

    The data are read within the config's ``limits``, updated from ``POISONDETECT_LIMITS`` and
    then from ``limit_overrides`` (``KEY=VALUE`` items). The config and the data are checked
    before torch is imported. (One function: the command's steps in the order a user sees their
    errors, each a few lines.)
    """
    from poisondetect.detectors.registry import names

    full = load_config(config)
    cfg = full["sample_level"]
    limits = configured_limits(full["limits"], limit_overrides)
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
    check_output_path(out, f"--out {out}")
    x, y, classes, is_poison = read_training_set(data, limits)

    from poisondetect.detectors.nets import infer_image_shape
    from poisondetect.metrics import filter_metrics

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


def filter_points(
    x: np.ndarray,
    y: np.ndarray,
    *,
    detector: str,
    params: dict,
    shared: dict,
    arch: str,
    seed: int,
    device: str,
) -> pd.DataFrame:
    """Fit a detector on a user's training set and score the same points, through the workflow's
    own detector code (``sample_level.filters``): one row per point with ``index``, ``label``,
    ``score``, the sub-scores and ``flagged``."""
    import pandas as pd

    from poisondetect.sample_level.filters import apply_detector, make_detector

    det = make_detector(detector, params, shared, arch=arch, seed=seed, device=device)
    out = apply_detector(det.fit(x, y), x, y)
    flagged = out.pop("flagged")
    return pd.DataFrame({"index": np.arange(len(y)), "label": y, **out, "flagged": flagged})
