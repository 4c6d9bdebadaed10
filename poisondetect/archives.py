"""Bounded reading of archives (``poisondetect.limits``' bounds): ``.npz`` files, whose zip
directory and npy headers are checked before numpy reads a byte (``read_npz``, ``check_npz``), and
tar archives, plain or compressed, read as a stream that stops past the limits
(``open_tar_stream``, ``MemberBudget``)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from poisondetect.errors import PoisonDetectError, short, short_repr
from poisondetect.limits import (
    KIND_NAMES,
    Limits,
    check_file_size,
    check_regular_file,
    describe_head,
    kind_of,
    over_limit,
    read_head,
    resolve,
)

# --------------------------------------------------------------------------- .npz archives

NPZ_HINT = "save the arrays with numpy.savez(path, x=x, y=y)"


def read_npz(
    path: str | os.PathLike,
    keys: list[str] | None = None,
    *,
    limits: Limits | Mapping[str, Any] | None = None,
    label: str | None = None,
    hint: str = NPZ_HINT,
    own_cache: bool = False,
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all, if None) of an ``.npz`` file, read only after every check passed.

    Before numpy reads a byte of data: the file must be a regular file and a zip archive (its first
    bytes), hold at most ``max_members`` members, declare at most ``max_uncompressed_mb`` in total
    (the zip directory's sizes, which also bound what decompression may produce), and every member
    must be an ``.npy`` array of plain numbers whose header agrees with the member's declared size.
    The file on disk is bounded by ``max_file_mb``. ``own_cache`` (the workflow's own prepared
    data): neither the file size nor stored (uncompressed) members are limited, since they cannot
    expand beyond what the prepare step wrote under the limits in force then. (A user's file is
    never ``own_cache``, whatever it claims to be.)

    A key missing from the archive is left out of the result (the caller names what it needs).
    Errors are one line: ``{label}: {problem}; {hint}``.
    """
    limits = resolve(limits)
    label = label or str(path)
    wanted = check_npz(path, keys, limits=limits, label=label, hint=hint, own_cache=own_cache)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in wanted}
    except PoisonDetectError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise PoisonDetectError(
            f"{label}: corrupt or truncated .npz ({_one_line(e)}); {hint}"
        ) from None


def check_npz(
    path: str | os.PathLike,
    keys: list[str] | None = None,
    *,
    limits: Limits | Mapping[str, Any] | None = None,
    label: str | None = None,
    hint: str = NPZ_HINT,
    own_cache: bool = False,
) -> list[str]:
    """Every check of ``read_npz`` (file type and size, members, declared sizes, npy headers)
    without reading the data; returns the keys of ``keys`` (all, if None) the archive holds."""
    limits = resolve(limits)
    label = label or str(path)
    if own_cache:
        check_regular_file(path, label)
    else:
        check_file_size(path, limits, label)
    head = read_head(path)
    if kind_of(head) != "zip":
        found = describe_head(head)
        if kind_of(head) == "npy":
            found += ", not an .npz archive of several"
        raise PoisonDetectError(f"{label}: not an .npz file: the file is {found}; {hint}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise over_limit(label, "member count", "max_members", limits, len(infos))
            expanding = [
                i for i in infos if not (own_cache and i.compress_type == zipfile.ZIP_STORED)
            ]
            total = sum(i.file_size for i in expanding)
            if total > limits.max_uncompressed_bytes:
                raise over_limit(
                    label, "declared uncompressed size", "max_uncompressed_mb", limits, total
                )
            by_key = {i.filename.removesuffix(".npy"): i for i in infos}
            wanted = list(by_key) if keys is None else [k for k in keys if k in by_key]
            for key in wanted:
                _check_npy_member(zf, by_key[key], label, hint)
        return wanted
    except PoisonDetectError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        NotImplementedError,
        zipfile.BadZipFile,
        zlib.error,
    ) as e:
        raise PoisonDetectError(
            f"{label}: corrupt or truncated .npz ({_one_line(e)}); {hint}"
        ) from None


def _check_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, hint: str) -> None:
    """Refuse a member that is not an .npy array of numbers matching its declared size."""
    name = short_repr(info.filename)
    if not info.filename.endswith(".npy"):
        raise PoisonDetectError(f"{label}: member {name} is not an .npy array; {hint}")
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version[0]}.{version[1]} is not read")
        except ValueError as e:
            raise PoisonDetectError(
                f"{label}: member {name} is not a readable .npy array ({_one_line(e)}); {hint}"
            ) from None
        header = f.tell()
    if dtype.hasobject:
        raise PoisonDetectError(
            f"{label}: member {name} holds Python objects (dtype {dtype}), which are never "
            f"read (they could run code); store numbers or strings: {hint}"
        )
    count = math.prod(shape)
    if header + count * dtype.itemsize != info.file_size:
        raise PoisonDetectError(
            f"{label}: member {name} announces {short(str(shape))} {dtype} ({count * dtype.itemsize:,} "
            f"bytes) but holds {info.file_size - header:,} bytes of data (corrupt or crafted); "
            f"{hint}"
        )


def _one_line(e: BaseException) -> str:
    text = short(str(e), 160)
    return text or type(e).__name__


# --------------------------------------------------------------------------- tar archives

_OPENERS = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f, mode="rb"),
    "xz": lambda f: lzma.LZMAFile(f, mode="rb"),
}


class _BoundedReader(io.RawIOBase):
    """A read-only stream that raises once more than ``limit`` bytes have been read from it."""

    def __init__(self, raw: Any, limit: int, on_exceed: Any, prefix: bytes = b"") -> None:
        self._raw, self._limit, self._on_exceed = raw, limit, on_exceed
        self._prefix, self._read = prefix, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._read
        if self._prefix:
            data, self._prefix = self._prefix[:size], self._prefix[size:]
        else:
            data = self._raw.read(max(0, min(size, self._limit + 1 - self._read)))
        self._read += len(data)
        if self._read > self._limit:
            raise self._on_exceed()
        return data


@contextlib.contextmanager
def open_tar_stream(
    path: str | os.PathLike, limits: Limits, label: str | None = None
) -> Iterator[tarfile.TarFile]:
    """A tar archive (plain, gzip, bzip2 or xz; told by its bytes, never guessed by decompressing)
    opened as a stream, whose decompressed bytes are cut at ``max_uncompressed_mb`` (plus the
    headers of at most ``max_members`` members). Members' declared sizes are checked by the caller
    as they come (``MemberBudget``)."""
    label = label or str(path)
    check_file_size(path, limits, label)
    head = read_head(path)
    kind = kind_of(head)
    if kind not in ("tar", *_OPENERS):
        raise PoisonDetectError(f"{label}: not a tar archive: the file is {describe_head(head)}")
    budget = limits.max_uncompressed_bytes + 1024 * (limits.max_members + 2)

    def exceeded() -> PoisonDetectError:
        return over_limit(
            label, "decompressed data (with tar headers)", "max_uncompressed_mb", limits
        )

    with open(path, "rb") as f:
        raw: Any = f if kind == "tar" else _OPENERS[kind](f)
        first = raw.read(512)
        if kind != "tar" and first[257:262] != b"ustar":
            raise PoisonDetectError(
                f"{label}: not a tar archive: {KIND_NAMES[kind]} whose content is "
                f"{describe_head(first)}"
            )
        stream = _BoundedReader(raw, budget, exceeded, prefix=first)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar


class MemberBudget:
    """Running checks of the members of one archive or folder, before each is read: their count,
    each one's size, their total."""

    def __init__(self, limits: Limits, label: str) -> None:
        self.limits, self.label = limits, label
        self.members, self.total = 0, 0

    def check(self, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise over_limit(self.label, "member count", "max_members", self.limits)
        if size > self.limits.max_file_bytes:
            what = f"member {short_repr(name)}: size"
            raise over_limit(self.label, what, "max_file_mb", self.limits, size)
        self.total += size
        if self.total > self.limits.max_uncompressed_bytes:
            what = "total size of the members"
            raise over_limit(self.label, what, "max_uncompressed_mb", self.limits, self.total)
