"""Bounded reading: size limits checked before an input is read, file types told by their bytes.

A file can claim to be what it is not: a 10 MB ``.npz`` can expand to gigabytes, a zero-filled file
named ``.tar`` keeps ``tarfile.is_tarfile`` busy for minutes, a PNG header can announce billions of
pixels. Every reader of user data goes through this module first:

- ``kind_of`` tells a file's type by its first bytes (zip ``PK\\x03\\x04``, gzip ``\\x1f\\x8b``, bzip2,
  xz, tar ``ustar`` at offset 257, npy ``\\x93NUMPY``), so a file that is not what its name says is
  refused at once, with a line naming it (and never with advice to load it unsafely);
- ``Limits`` holds the bounds (config key ``limits``, the ``--limit KEY=VALUE`` option of the
  commands, or the environment variable ``POISONDETECT_LIMITS="max_file_mb=8192,..."``);
  ``check_file_size``, ``check_image_pixels`` and the archive readers of ``poisondetect.archives``
  (``read_npz``, ``open_tar_stream``) check the sizes a file declares (zip directory, npy headers,
  tar headers, image headers) against them before any data is decompressed or decoded, and stop a
  stream that runs past them.

The defaults are sized below a laptop's memory: no single input, and no image folder or archive
as a whole, may hold more than 256 MB once decompressed or decoded (the commands then need a few
times that while they work), and one image at most 16.7 million pixels. They pass every real data
set this project reads (MNIST and Fashion-MNIST: 47 MB decoded; CIFAR-10 as pickles, 31 MB a
batch, or as the JPEG archive, 184 MB decoded; the scikit-learn digits); a larger genuine data set
needs a raised limit. Every file is checked to be a regular file before it is opened (a FIFO, a
device or a directory is refused at once instead of hanging or filling memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any

from poisondetect.errors import PoisonDetectError, short, short_repr

MB = 1024 * 1024
ENV_VAR = "POISONDETECT_LIMITS"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds on what one input may hold (sizes in MiB)."""

    max_file_mb: float = 256
    """Size on disk of one input file (an .npz, an archive, an image, an IDX or CIFAR batch, a
    checkpoint or bundle)."""
    max_uncompressed_mb: float = 256
    """What one file holds once decompressed (an .npz's arrays, an archive's members, a gzipped IDX
    file; an image folder's files together), as its headers declare it; and the decoded size of an
    image folder's or archive's images together (width x height x channels, a palette image
    counted as RGB)."""
    max_members: int = 250_000
    """Entries of one .npz or archive, or files and folders of an image folder."""
    max_image_pixels: int = 16_777_216
    """Width x height of one image (4096 x 4096)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise PoisonDetectError(
                    f"limit {field.name} = {short_repr(value)} must be a positive number; set it in the "
                    "config's limits block or with --limit KEY=VALUE"
                )
            if field.name in ("max_members", "max_image_pixels") and value != int(value):
                raise PoisonDetectError(
                    f"limit {field.name} = {short_repr(value)} must be an integer"
                )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def max_uncompressed_bytes(self) -> int:
        return int(self.max_uncompressed_mb * MB)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, source: str = "limits") -> Limits:
        """Limits from a mapping (the config's ``limits`` block); missing keys keep the defaults."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PoisonDetectError(
                f"{source}: unknown limit(s) {short(', '.join(map(str, unknown)))}; known: {', '.join(known)}"
            )
        return cls(**values)

    def updated(self, items: list[str] | str | None, source: str = "--limit") -> Limits:
        """A copy with ``KEY=VALUE`` items applied (a list, or one comma-separated string)."""
        if not items:
            return self
        if isinstance(items, str):
            items = [i for i in items.split(",") if i.strip()]
        values: dict[str, float] = {}
        for item in items:
            key, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError
                number = float(value)
            except ValueError:
                raise PoisonDetectError(
                    f"{source} {short_repr(item)}: expected KEY=NUMBER, e.g. max_uncompressed_mb=8192"
                ) from None
            values[key.strip()] = int(number) if number.is_integer() else number
        return Limits.from_mapping({**dataclasses.asdict(self), **values}, source)


_current: Limits | None = None


def set_limits(limits: Limits | Mapping[str, Any] | None) -> None:
    """Make ``limits`` (a ``Limits``, a config ``limits`` block, or None for the defaults and the
    environment) the bounds of every reader that is given none, for this process."""
    global _current
    _current = limits if limits is None or isinstance(limits, Limits) else configured_limits(limits)


def current_limits() -> Limits:
    """The bounds set with ``set_limits``, else the defaults updated from ``POISONDETECT_LIMITS``."""
    return _current if _current is not None else configured_limits()


def configured_limits(
    block: Mapping[str, Any] | None = None, overrides: list[str] | None = None
) -> Limits:
    """The config's ``limits`` block (None: the defaults), then ``POISONDETECT_LIMITS``, then the
    ``--limit KEY=VALUE`` items of a command line: each later one wins, key by key."""
    limits = Limits.from_mapping(block, "config key limits")
    return limits.updated(os.environ.get(ENV_VAR), ENV_VAR).updated(overrides, "--limit")


def resolve(limits: Limits | Mapping[str, Any] | None) -> Limits:
    if limits is None:
        return current_limits()
    return limits if isinstance(limits, Limits) else Limits.from_mapping(limits)


def _mb(n: int | float) -> str:
    return f"{n / MB:,.1f} MB" if n >= MB / 10 else f"{int(n):,} bytes"


def over_limit(
    label: str, what: str, key: str, limits: Limits, value: int | float | None = None
) -> PoisonDetectError:
    """The error for an input over one of the limits: what, the limit, how to raise it."""
    bound = getattr(limits, key)
    in_mb = key.endswith("_mb")
    size = "" if value is None else f" ({_mb(value) if in_mb else f'{int(value):,}'})"
    limit = f"{bound:,g} MB" if in_mb else f"{int(bound):,}"
    return PoisonDetectError(
        f"{label}: {what}{size} exceeds the limit {key} = {limit}; refused. If the file is "
        f"genuine, raise the limit: config key limits.{key}, or --limit {key}=N, or "
        f"{ENV_VAR}={key}=N"
    )


# --------------------------------------------------------------------------- file types

HEAD_BYTES = 512 + 265  # enough for a tar header's magic at offset 257
_MAGIC = [
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip archive
    (b"\x93NUMPY", "npy"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
]
KIND_NAMES = {
    "zip": "a zip archive",
    "npy": "a single .npy array",
    "gzip": "a gzip file",
    "bzip2": "a bzip2 file",
    "xz": "an xz file",
    "tar": "a tar archive",
    "empty": "empty",
    "zeros": "only zero bytes at its start",
    "other": "of an unknown type",
}


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_a_file(label: str, mode: int) -> PoisonDetectError:
    return PoisonDetectError(
        f"{label}: {_file_type(mode)}, not a regular file; give the path of a file"
    )


def check_regular_file(path: str | os.PathLike, label: str | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` (which never blocks); refuse anything but a regular file (a FIFO
    would hang a reader, a device such as /dev/zero fill its memory)."""
    label = label or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PoisonDetectError(f"{label}: no such file; check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise not_a_file(label, st.st_mode)
    return st


def open_regular(path: str | os.PathLike, label: str | None = None) -> io.BufferedReader:
    """``path`` opened for reading in binary, only if it is a regular file: opened without blocking
    (a FIFO swapped in after a check cannot hang the open) and checked on the open descriptor."""
    label = label or str(path)
    check_regular_file(path, label)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_a_file(label, mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    with open_regular(path) as f:
        return f.read(n)


def read_bounded(path: str | os.PathLike, max_bytes: int, label: str, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused when it holds more than ``max_bytes``
    (checked on its size first, then on what is read: a file that grows cannot get past it)."""
    with open_regular(path, label) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise PoisonDetectError(
            f"{label}: {_mb(max(size, len(data)))} is too large for {what} (at most "
            f"{_mb(max_bytes)}); give the right file"
        )
    return data


def kind_of(head: bytes) -> str:
    """The type of a file from its first bytes: zip, npy, gzip, bzip2, xz, tar, empty, zeros, other."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    if not head:
        return "empty"
    if not head.strip(b"\x00"):
        return "zeros"
    return "other"


def describe_head(head: bytes) -> str:
    """``head``'s type in words, with its first bytes when the type is unknown."""
    kind = kind_of(head)
    if kind == "other":
        return f"of an unknown type (it starts with {head[:8].hex(' ')})"
    return KIND_NAMES[kind]


def check_file_size(path: str | os.PathLike, limits: Limits, label: str | None = None) -> int:
    """The size of ``path`` in bytes; refuse it when over ``limits.max_file_mb``, or when it is not
    a regular file."""
    size = check_regular_file(path, label).st_size
    if size > limits.max_file_bytes:
        raise over_limit(label or str(path), "file size", "max_file_mb", limits, size)
    return size


# --------------------------------------------------------------------------- images


def check_image_pixels(size: tuple[int, int], limits: Limits, label: str) -> None:
    """Refuse an image whose header announces more than ``max_image_pixels`` pixels."""
    width, height = size
    if width * height > limits.max_image_pixels:
        what = f"{width} x {height} image: pixel count"
        raise over_limit(label, what, "max_image_pixels", limits, width * height)


class DecodedBudget:
    """The decoded size of an image folder's or archive's images together (width x height x the
    bytes of a pixel once decoded and converted; a palette image counted at its RGB size), checked
    against ``max_uncompressed_mb`` from each image's header, before the image is decoded. One
    image's decoding also needs its decoded and its converted copy at once: that sum is bounded by
    ``max_uncompressed_mb`` too."""

    def __init__(self, limits: Limits, label: str) -> None:
        self.limits, self.label = limits, label
        self.total = 0

    def check(
        self, where: str, size: tuple[int, int], bytes_per_pixel: int, peak_per_pixel: int = 0
    ) -> None:
        width, height = size
        peak = width * height * peak_per_pixel
        if peak > self.limits.max_uncompressed_bytes:
            what = (
                f"{where}: decoding the {width} x {height} image ({peak_per_pixel} bytes a pixel "
                "while it is decoded and converted)"
            )
            raise over_limit(self.label, what, "max_uncompressed_mb", self.limits, peak)
        self.total += width * height * bytes_per_pixel
        if self.total > self.limits.max_uncompressed_bytes:
            what = (
                f"decoded size of the images up to {where} ({width} x {height} x "
                f"{bytes_per_pixel} bytes)"
            )
            raise over_limit(self.label, what, "max_uncompressed_mb", self.limits, self.total)


@contextlib.contextmanager
def pillow_pixel_limit(limits: Limits) -> Iterator[None]:
    """Pillow's own decompression-bomb bound set to ``max_image_pixels`` for the block (Pillow
    refuses twice that at ``Image.open``, before our check sees the size; restored afterwards)."""
    import warnings

    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse instead
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before
