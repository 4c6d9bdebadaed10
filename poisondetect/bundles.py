"""Every safetensors file the package writes and reads: checkpoints, the activation auto-encoder,
the model-level detectors' fitted states and the audit bundle.

One format: named arrays, plus JSON metadata under the key ``poisondetect`` that says the file's
``kind`` and carries a ``digest``, the SHA-256 of its content (the arrays' names, dtypes, shapes and
bytes, and the rest of the metadata). ``read_bundle`` recomputes the digest and refuses a file whose
content no longer matches it (a flipped byte, an edited threshold), so a file is checked before it
is believed. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from poisondetect.errors import PoisonDetectError, as_os_error
from poisondetect.io import atomic_path, json_default
from poisondetect.limits import check_file_size, current_limits

METADATA_KEY = "poisondetect"


def _canonical_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, default=json_default)


def content_digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 of a bundle's content: every array (name, dtype, shape, bytes, in name order) and
    the metadata without its ``digest`` key."""
    h = hashlib.sha256()
    h.update(_canonical_json({k: v for k, v in meta.items() if k != "digest"}).encode())
    for name in sorted(arrays):
        a = _numpy(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _numpy(value: Any) -> np.ndarray:
    """A C-contiguous numpy array of the same shape (0-d arrays stay 0-d, unlike with
    ``np.ascontiguousarray``)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def write_bundle(path: str | os.PathLike, arrays: dict[str, Any], meta: dict) -> str:
    """Write ``arrays`` (numpy arrays or torch tensors) and ``meta`` (JSON-serialisable, with a
    ``kind``) to the safetensors file ``path``, atomically; returns the content digest stored in
    it."""
    from safetensors.numpy import save_file

    if "kind" not in meta:
        raise PoisonDetectError(f"{path}: bundle metadata needs a 'kind'")
    arrays = {k: _numpy(v) for k, v in arrays.items()}
    try:
        meta = json.loads(_canonical_json({k: v for k, v in meta.items() if k != "digest"}))
    except (TypeError, ValueError) as e:
        raise PoisonDetectError(f"metadata for {path} is not JSON serialisable: {e}") from e
    meta["digest"] = content_digest(arrays, meta)
    with atomic_path(path) as tmp:
        try:
            save_file(arrays, str(tmp), metadata={METADATA_KEY: _canonical_json(meta)})
        except Exception as e:  # safetensors' own error type for a full disk: the OSError inside
            raise as_os_error(e, str(path)) or e from e
    return meta["digest"]


def read_safetensors(
    path: str | os.PathLike, framework: str = "numpy"
) -> tuple[dict[str, Any], str | None]:
    """Arrays (``framework`` numpy or pt) and the raw ``poisondetect`` metadata string (None when
    absent) of any safetensors file, ours or someone else's. A missing or unreadable file is a
    PoisonDetectError naming it."""
    from safetensors import safe_open

    path = Path(path)
    check_file_size(path, current_limits())  # a regular file (a FIFO would hang) within the limit
    try:
        with safe_open(str(path), framework=framework, device="cpu") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged header or body
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PoisonDetectError(
            f"{path}: not a readable safetensors file, truncated or corrupt "
            f"({type(e).__name__}: {first})"
        ) from e
    return arrays, raw


def parse_metadata(path: str | os.PathLike, raw: str | None) -> dict:
    """The metadata dict of a bundle (``{}`` when the file has none)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise PoisonDetectError(f"{path}: its metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise PoisonDetectError(f"{path}: its metadata must be a dict, got {type(meta).__name__}")
    return meta


def verify_digest(path: str | os.PathLike, arrays: dict[str, Any], meta: dict) -> None:
    """Refuse a bundle whose content does not match the digest written with it (when it has one)."""
    if "digest" not in meta:
        return
    actual = content_digest({k: _numpy(v) for k, v in arrays.items()}, meta)
    if actual != meta["digest"]:
        raise PoisonDetectError(
            f"{path}: its content does not match the digest written with it (recorded "
            f"{str(meta['digest'])[:16]}..., content {actual[:16]}...): the file was altered or "
            "damaged; rebuild it with the workflow or get an intact copy"
        )


def read_bundle(
    path: str | os.PathLike, kind: str, *, require_digest: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a poisondetect bundle of the given ``kind``, its digest checked; a
    clear error when the file is missing, damaged, altered or of another kind."""
    arrays, raw = read_safetensors(path)
    meta = parse_metadata(path, raw)
    if meta.get("kind") != kind:
        raise PoisonDetectError(
            f"{path} holds a {meta.get('kind', 'unknown kind of')} file, not a {kind}; "
            "rebuild it with the workflow"
        )
    if require_digest and "digest" not in meta:
        raise PoisonDetectError(
            f"{path} carries no content digest, so it cannot be verified; rebuild it with the "
            "workflow"
        )
    verify_digest(path, arrays, meta)
    return arrays, meta


def read_metadata(path: str | os.PathLike) -> dict:
    """A bundle's metadata, from its header only (nothing verified here)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return parse_metadata(path, (f.metadata() or {}).get(METADATA_KEY))
