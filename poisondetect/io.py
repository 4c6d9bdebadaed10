"""Atomic file output and small I/O helpers.

Every output of the workflow is written to a temporary file in the same directory and renamed onto
its final name only once it is complete, so an interrupted job never leaves a half-file that looks
complete (a rename within one file system is atomic). The final file gets the permissions the
user's umask gives any new file (group-readable under the usual 022 or 002).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    An ``OSError`` of the block that names no file (a ``write`` on a full disk) is raised again
    naming ``path``, so that its one-line message says which output could not be written.

    ``suffix`` defaults to the final file's suffix, so writers that look at the extension
    (``np.savez``, matplotlib) behave as for the final name.
    """
    path = Path(path)
    refuse_special_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); the result gets the mode of any file the user
        # writes (0666 minus the umask), so a group sharing a project directory can read it.
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        refuse_special_output(path)  # again: it may have been replaced while the block ran
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if (
            isinstance(e, OSError)
            and e.errno is not None
            and e.filename in (None, "", tmp, str(tmp_path))
        ):
            # a failed write() names no file (a full disk), or names the temporary file: name the
            # output, not its temp file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


_SYSTEM_DIRS = ("/dev", "/proc", "/sys")


def _in_system_dir(path: str) -> bool:
    return any(path == d or path.startswith(d + os.sep) for d in _SYSTEM_DIRS)


class _LinkLoop(Exception):
    """The path's symbolic links go round (more hops than the kernel follows)."""


def _system_path(path: str | os.PathLike) -> str | None:
    """The first place in /dev, /proc or /sys that ``path`` names or leads to through symbolic
    links, hop by hop (None if none). ``os.path.realpath`` alone is not enough: it resolves
    /dev/stdout through /proc/self/fd/1 to the file the standard output is redirected to, and the
    rename would then replace the link /dev/stdout itself. ``..`` is never collapsed as text (after
    a linked folder it means that folder's parent, as the kernel reads it): each hop resolves its
    folder with ``realpath`` and looks at its last name itself. Raises ``_LinkLoop``."""
    hop = os.path.join(os.getcwd(), os.fspath(path))
    for _ in range(40):  # the kernel's own limit on a chain of links
        folder, name = os.path.split(hop.rstrip(os.sep) or os.sep)
        if name in ("", ".", ".."):
            hop = os.path.realpath(hop)  # no last name to look at: the whole path is a folder
            return hop if _in_system_dir(hop) else None
        hop = os.path.join(os.path.realpath(folder), name)
        if _in_system_dir(hop):
            return hop
        if not os.path.islink(hop):
            return None
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))  # absolute targets replace it
    raise _LinkLoop(hop)


def refuse_special_output(path: str | os.PathLike, label: str | None = None) -> None:
    """Refuse an output path that exists and is not a regular file (a device such as /dev/null or
    /dev/stdout, a FIFO, a directory): the atomic rename would replace it (as root, the device)."""
    from poisondetect.errors import PoisonDetectError
    from poisondetect.limits import _file_type

    try:
        real = _system_path(path)
    except _LinkLoop:
        raise PoisonDetectError(
            f"{label or path}: a loop of symbolic links, not an output path; give the path of a "
            "file to write"
        ) from None
    if real is not None:
        # /dev/stdout leads to /proc/self/fd/1, which may be a file: the rename would replace the
        # link in /dev, not write to the standard output
        raise PoisonDetectError(
            f"{label or path}: a file of the system ({real}), not an output path; give the path "
            "of a file to write"
        )
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        raise PoisonDetectError(
            f"{label or path}: exists and is {_file_type(mode)}, not a regular file; give the "
            "path of a file to write (it is written whole, then renamed into place)"
        )


def check_output_path(path: str | os.PathLike, label: str) -> None:
    """Before any work: ``path`` can be written as an output (``label``, e.g. ``--out X``, names
    it): not an existing non-regular file, and its folder (created if missing) takes a probe file
    (written, flushed to disk and removed), so that a read-only or full disk is found at once, not
    after the fitting."""
    from poisondetect.errors import PoisonDetectError, os_error_message

    path = Path(path)
    refuse_special_output(path, label)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as e:
        what = os_error_message(e.errno) or (e.strerror or type(e).__name__)
        raise PoisonDetectError(f"{label}: cannot write in its folder {folder} ({what})") from None


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not safe against threads)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    from poisondetect.errors import PoisonDetectError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise PoisonDetectError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise PoisonDetectError(
            f"{path}: not valid JSON ({e}); delete it and rerun the job that writes it"
        ) from e


def kept_json(path: str | os.PathLike, key: dict, make: Callable[[], Any],
              dump: Callable[[Any], Any] = lambda v: v,
              load: Callable[[Any], Any] = lambda v: v) -> tuple[Any, bool]:  # fmt: skip
    """A value kept in the JSON file ``path`` under a digest of ``key`` (a JSON-able mapping of
    everything the value depends on): read back (``load`` of what ``dump`` stored) when the file
    holds the same digest, else made by ``make()`` and written atomically (a missing, damaged or
    unloadable file is made again). Returns the value and whether it was kept."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        if entry.get("key") == digest:
            return load(entry["value"]), True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none yet, or damaged: made again
    value = make()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps({"key": digest, "value": dump(value)}))
    return value, False


def json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_array(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
