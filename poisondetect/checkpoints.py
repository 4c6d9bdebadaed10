"""Model checkpoints: safetensors save/load, and weights-only loading of ``.pt`` files.

A checkpoint is a safetensors file whose metadata holds, as JSON under the key ``poisondetect``,
what is needed to rebuild the model (arch, in_channels, num_classes, image_size, width) plus anything
else the caller adds. Models received from someone else may be hostile: ``.pt`` / ``.pth`` / ``.bin``
files are only read with ``torch.load(weights_only=True)``, which never runs code from the file, and
anything other than plain tensors (and plain metadata) is refused.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisondetect.bundles import read_safetensors, verify_digest, write_bundle
from poisondetect.errors import PoisonDetectError, count_nonfinite, short
from poisondetect.limits import (
    check_file_size,
    check_regular_file,
    current_limits,
    kind_of,
    over_limit,
    read_head,
)
from poisondetect.models import build_model, image_hw

CHECKPOINT_KIND = "poisondetect.checkpoint"
SPEC_KEYS = ("arch", "in_channels", "num_classes", "image_size", "width")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")

HOW_TO_PROVIDE = (
    "Provide the weights as a .safetensors file, or as a .pt file holding only a state dict of "
    "tensors (torch.save(model.state_dict(), path))"
)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``model``'s state dict to the safetensors file ``path`` (atomically).

    ``metadata`` must contain the model spec (``arch``, ``in_channels``, ``num_classes``,
    ``image_size``, ``width``); it is stored as JSON under the key ``poisondetect``.
    """
    missing = [k for k in SPEC_KEYS if k not in metadata]
    if missing:
        raise PoisonDetectError(
            f"checkpoint metadata for {path} lacks {', '.join(missing)}; pass the model spec "
            f"({', '.join(SPEC_KEYS)}) in the metadata"
        )
    write_bundle(path, model.state_dict(), {**metadata, "kind": CHECKPOINT_KIND})


def _refuse(path: Path, reason: str) -> PoisonDetectError:
    return PoisonDetectError(
        f"{path}: refusing to unpickle a suspicious model ({reason}); it may carry code that would "
        f"run on loading. {HOW_TO_PROVIDE}"
    )


def _parse_metadata(path: Path, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PoisonDetectError(f"{path}: checkpoint metadata is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise PoisonDetectError(
            f"{path}: checkpoint metadata must be a dict, got {type(raw).__name__}"
        )
    return raw


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        state, raw = read_safetensors(path, framework="pt")
        metadata = _parse_metadata(path, raw)
        verify_digest(path, state, metadata)
    except PoisonDetectError as e:
        raise PoisonDetectError(f"{e}; {GET_INTACT_COPY}") from e
    # the file's own bookkeeping (kind, digest) is not the model's metadata
    return state, {k: v for k, v in metadata.items() if k not in ("kind", "digest")}


GET_INTACT_COPY = (
    "get an intact copy (a model you received: from its sender; a file the workflow wrote: delete "
    "it and rerun the job that writes it)"
)


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's run over several lines of advice)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.split(r"(?<=\.) (?=This is|If you|Please)", text)[0]


def _unpickle_reason(message: str) -> str:
    """The useful part of torch's weights-only error (never its advice to disable the check)."""
    # torch < 2.14: "Unsupported global: GLOBAL posix.system"; torch 2.14: "Trying to load
    # unsupported GLOBAL posix.system whose module posix is blocked"
    found = re.search(r"(?i)unsupported (?:global: )?GLOBAL (\S+)", message)
    if found:
        return f"it references {found.group(1).rstrip('.')}, which is code, not a tensor"
    found = re.search(r"Unsupported operand (\d+)", message)
    if found:  # e.g. FRAME: pickle protocol 4 or later, which torch's loader does not read
        code = int(found.group(1))
        name = next((op.name for op in pickletools.opcodes if ord(op.code) == code), str(code))
        return (
            f"not a weights-only state dict: a plain pickle (opcode {name}, protocol "
            f"{_opcode_protocol(code)} or later) that torch's weights-only loader does not read"
        )
    found = re.search(r"WeightsUnpickler error: \s*([^\n]+)", message)
    return (
        f"it holds more than tensors: {found.group(1).strip() if found else 'unsupported content'}"
    )


def _opcode_protocol(code: int) -> int:
    return next((op.proto for op in pickletools.opcodes if ord(op.code) == code), 0)


# What torch.save writes for a state dict: none of these run code from the file.
_TENSOR_GLOBALS = re.compile(
    r"^(collections\.OrderedDict|torch\._utils\._rebuild_\w+|torch\.\w*Storage|"
    r"torch\.storage\.\w+|torch\.(Size|device|dtype|float\w*|int\w*|uint\w*|bfloat16|bool))$"
)


def _pickled_globals(path: Path, limit: int) -> list[str]:
    """The globals (``module.name``) the pickle(s) of a ``.pt`` file reference, read without
    unpickling anything (``pickletools.genops``): the object pickle of a zip checkpoint, or the
    first pickles of a legacy one / a plain pickle. Empty when the file cannot be parsed."""
    found: list[str] = []
    try:
        if kind_of(read_head(path, 4)) == "zip":
            with zipfile.ZipFile(path) as zf:
                info = next((i for i in zf.infolist() if i.filename.endswith("data.pkl")), None)
                if info is None or info.file_size > limit:
                    return found
                streams = [io.BytesIO(zf.read(info))]
        else:
            streams = [open(path, "rb")]  # noqa: SIM115 - closed below
        for stream in streams:
            with stream:
                for _ in range(5):  # legacy files: magic, protocol, sys info, object, keys
                    found += _globals_of_one_pickle(stream)
    except Exception:  # the scan only explains a refusal: torch.load decides
        pass
    return found


def _globals_of_one_pickle(stream: Any) -> list[str]:
    names: list[str] = []
    strings: list[str] = []  # recent string arguments, for STACK_GLOBAL
    memo: dict[int, str] = {}
    for op, arg, _pos in pickletools.genops(stream):
        if op.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]) if len(strings) >= 2 else "(unknown global)")
        elif op.name.endswith(("UNICODE", "UNICODE8", "STRING")):
            strings.append(arg.decode("latin1") if isinstance(arg, bytes) else str(arg))
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(arg)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
            strings.append(memo[int(arg)])
    return names


def _load_weights_only(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    limits = current_limits()
    check_file_size(path, limits)
    if kind_of(read_head(path, 4)) == "zip":  # torch's format: its records are size-checked too
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - zipfile, given a hostile directory, raises
            # BadZipFile, OSError, ValueError, EOFError, NotImplementedError ("zip file version")
            raise PoisonDetectError(
                f"{path}: not a readable weights file, truncated or corrupt "
                f"({type(e).__name__}: {short(_first_line(e), 160)}); {GET_INTACT_COPY}"
            ) from None
        if len(infos) > limits.max_members:
            raise over_limit(str(path), "record count", "max_members", limits, len(infos))
        total = sum(i.file_size for i in infos)
        if total > limits.max_uncompressed_bytes:
            raise over_limit(str(path), "declared size", "max_uncompressed_mb", limits, total)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's restricted unpickler raises this for any global it does not allow (code, classes).
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            code = [
                g
                for g in _pickled_globals(path, limits.max_uncompressed_bytes)
                if not _TENSOR_GLOBALS.match(g)
            ]
            reason = (
                f"it references {code[0]}, which is code, not a tensor"
                if code
                else _unpickle_reason(str(e))
            )
            raise _refuse(path, reason) from e
        raise PoisonDetectError(
            f"{path}: not a readable weights file, truncated or corrupt ({_first_line(e)}); "
            f"{GET_INTACT_COPY}"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's weights-only unpickler, given hostile bytes,
        # raises whatever its parsing meets (IndexError on an empty stack, KeyError, TypeError...):
        # each means a file that is not a readable state dict
        raise PoisonDetectError(
            f"{path}: not a readable weights file, truncated or corrupt "
            f"({type(e).__name__}: {short(_first_line(e), 160)}); {GET_INTACT_COPY}"
        ) from None
    if not isinstance(obj, dict):
        raise _refuse(path, f"it holds a {type(obj).__name__}, not a state dict")
    metadata: dict[str, Any] = {}
    if "state_dict" in obj:
        metadata = _parse_metadata(path, obj.get("metadata"))
        obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise _refuse(path, f"its 'state_dict' is a {type(obj).__name__}, not a dict")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise _refuse(path, f"non-tensor entries in the state dict: {', '.join(bad[:5])}")
    return dict(obj), metadata


def load_state_dict_safely(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, metadata)`` from a ``.safetensors`` or weights-only ``.pt`` file.

    Never unpickles code: ``.pt`` / ``.pth`` / ``.bin`` files go through
    ``torch.load(weights_only=True)`` and must hold a plain state dict of tensors, or a dict with
    ``state_dict`` (and optionally ``metadata``) entries.
    """
    path = Path(path)
    if not path.exists():
        raise PoisonDetectError(f"{path}: checkpoint file not found")
    check_regular_file(path)  # a FIFO would hang the reader, a device fill its memory
    suffix = path.suffix.lower()
    if suffix in (".safetensors", *PICKLE_SUFFIXES):
        loader = _load_safetensors if suffix == ".safetensors" else _load_weights_only
        state, metadata = loader(path)
        require_finite_weights(path, state)
        return state, metadata
    raise PoisonDetectError(
        f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; use .safetensors "
        f"(preferred) or a weights-only {'/'.join(PICKLE_SUFFIXES)} state dict"
    )


def require_finite_weights(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Refuse a state dict with a NaN or an infinity in any tensor, naming the tensors.

    Such a model's activations and reconstruction errors are NaN, and ``nan > threshold`` is False:
    scoring it would read as a clean verdict.
    """
    bad = [k for k, v in state.items() if count_nonfinite(v.reshape(-1, 1))[0]]
    if bad:
        raise PoisonDetectError(
            f"{path}: non-finite weights (NaN or infinity) in {len(bad)} of {len(state)} tensors "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); such a model cannot be "
            f"scored or used: {GET_INTACT_COPY}, or retrain it"
        )


def check_arch(requested: str | None, expected: str | None, what: str) -> str | None:
    """``requested`` (or ``expected`` when none is requested); refuse when the two differ.

    ``what`` names where ``expected`` comes from (e.g. the detector bundle): a detector fitted on
    one architecture's activations says nothing about another architecture's.
    """
    if requested and expected and requested != expected:
        raise PoisonDetectError(
            f"{what} was fitted on the activations of a {expected} model, not {requested}: it "
            f"cannot judge a {requested} model; drop --arch {requested} or use a detector bundle "
            f"fitted on {requested}"
        )
    return requested or expected


def _strip_prefix(
    state: dict[str, torch.Tensor], prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` adds to every key."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | list[int] | tuple[int, int] | None = None,
    width: float | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path``; return ``(model in eval mode, metadata)``.

    The spec comes from the file's metadata; the keyword arguments supply what the file lacks
    (a plain ``.pt`` state dict has none) and must agree with what it has. ``width`` defaults to 1.0.
    The returned metadata is the file's, completed with the spec used.
    """
    path = Path(path)
    state, metadata = load_state_dict_safely(path)
    given = {
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
        "width": width,
    }
    spec: dict[str, Any] = {}
    for key in SPEC_KEYS:
        stored, arg = metadata.get(key), given[key]
        if stored is not None and arg is not None and not _same(key, stored, arg):
            raise PoisonDetectError(
                f"{path}: the checkpoint says {key}={stored!r} but {key}={arg!r} was requested"
            )
        spec[key] = stored if stored is not None else arg
    if spec["width"] is None:
        spec["width"] = 1.0
    missing = [k for k in SPEC_KEYS if spec[k] is None]
    if missing:
        raise PoisonDetectError(
            f"{path}: the checkpoint does not say {', '.join(missing)}; pass "
            f"{', '.join(f'{k}=...' for k in missing)} to load_checkpoint"
        )
    model = build_model(
        spec["arch"], spec["in_channels"], spec["num_classes"], spec["image_size"], spec["width"]
    )
    _load_into(model, _strip_prefix(state), path, spec)
    model.to(device).eval()
    return model, {**metadata, **spec}


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "image_size":
        return image_hw(a) == image_hw(b)
    return a == b


def _load_into(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, spec: dict[str, Any]
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:3])})")
    if problems:
        spec_text = ", ".join(f"{k}={spec[k]!r}" for k in SPEC_KEYS)
        raise PoisonDetectError(
            f"{path}: the weights do not fit the model {spec_text}: {'; '.join(problems)}; check "
            "the architecture arguments or the file"
        )
    model.load_state_dict(state, strict=True)
