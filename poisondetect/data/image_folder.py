"""Image folders: train/<class>/ and test/<class>/ images, a directory or a tar archive (read as
a stream, every member checked against the limits before it is read)."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from poisondetect.archives import MemberBudget, open_tar_stream
from poisondetect.data.common import (
    IMAGE_EXTENSIONS,
    _layout_error,
    _Raw,
)
from poisondetect.errors import PoisonDetectError, short, short_repr
from poisondetect.limits import (
    DecodedBudget,
    Limits,
    check_image_pixels,
    describe_head,
    kind_of,
    over_limit,
    pillow_pixel_limit,
    read_head,
)


def _iter_folder_files(root: Path, limits: Limits) -> Iterator[tuple[str, bytes | None]]:
    """(relative posix path, file bytes) of every image file under a directory, and
    (relative path + "/", None) for every directory (so that empty class folders are seen).

    A symbolic link that leads out of the folder is an error, never followed; links that stay
    inside are read (files) or left out (directories: their target is read where it lies).
    Entries are counted against ``max_members``, each image file's size (before it is read)
    against ``max_file_mb`` and their total against ``max_uncompressed_mb``.
    """
    real_root = root.resolve()
    budget = MemberBudget(limits, str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for d in dirnames:
            _check_link(here / d, root, real_root)
            budget.check(d, 0)
            if not (here / d).is_symlink():
                yield (here / d).relative_to(root).as_posix() + "/", None
        for name in sorted(filenames):
            file = here / name
            _check_link(file, root, real_root)
            if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                rel = file.relative_to(root).as_posix()
                budget.check(rel, file.stat().st_size)
                yield rel, file.read_bytes()
            else:
                budget.check(name, 0)


def _check_link(path: Path, root: Path, real_root: Path) -> None:
    if path.is_symlink():
        target = path.resolve()
        if target != real_root and real_root not in target.parents:
            raise _layout_error(
                "image_folder",
                root,
                f"{path.relative_to(root)} is a symbolic link leading out of the folder (to "
                f"{os.readlink(path)}); it is not followed: copy the file into the folder instead",
            )


def _iter_tar_files(archive: Path, limits: Limits) -> Iterator[tuple[str, bytes | None]]:
    """(member path, bytes) of every image member, read in archive order without extracting
    (nothing is ever written to disk), and (path + "/", None) for every directory member.

    Members with an absolute path or ``..``, and links (symbolic or hard), are refused: such an
    archive is malformed or hostile, and links are never followed. The archive is read as a
    bounded stream (``poisondetect.archives.open_tar_stream``); every member's declared size is
    checked (``MemberBudget``) before its data are read.
    """
    budget = MemberBudget(limits, str(archive))
    try:
        with open_tar_stream(archive, limits) as tar:
            for member in tar:
                name = member.name
                budget.check(name, member.size)
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise _layout_error(
                        "image_folder",
                        archive,
                        f"member {short_repr(name)} has an absolute path or '..'; refusing the archive "
                        "(repack it with relative paths: tar -C <folder> -cf data.tar train test)",
                    )
                if member.issym() or member.islnk():
                    raise _layout_error(
                        "image_folder",
                        archive,
                        f"member {short_repr(name)} is a link (to {short_repr(member.linkname)}); links are not "
                        "followed: repack the archive with the files themselves (tar -h)",
                    )
                if member.isdir():
                    yield name.rstrip("/") + "/", None
                elif member.isfile() and PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS:
                    f = tar.extractfile(member)
                    if f is not None:
                        yield name, f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        problem = f"cannot read archive ({short(str(e), 160) or type(e).__name__})"
        raise _layout_error("image_folder", archive, problem) from None


def _split_member(name: str) -> tuple[str, str, str, str] | None:
    """Map ``[top/]split/class/file`` to (top, split, class, file); None for other paths."""
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    if any(p.startswith(".") for p in parts):  # hidden files such as macOS ._ resource forks
        return None
    if len(parts) == 3 and parts[0] in ("train", "test"):
        return ("", *parts)
    if len(parts) == 4 and parts[1] in ("train", "test"):
        return tuple(parts)  # type: ignore[return-value]
    return None


# Bytes of one pixel of an image as Pillow decodes it, by mode (others: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "RGB": 3, "YCbCr": 3}


def _decoded_bytes_per_pixel(mode: str, out_mode: str) -> tuple[int, int]:
    """The bytes a pixel takes once decoded and converted (the larger of the decoded mode's and
    the output's; a palette image counted at its RGB size, as it is expanded), and at the peak of
    its decoding (the decoded image, its converted copy and the array made of it together)."""
    native = _MODE_BYTES.get(mode, 4)
    out = 1 if out_mode == "L" else 3
    expanded = max(native, 3) if mode in ("P", "PA") else native
    return max(expanded, out), native + 2 * out


def _decode_image(
    data: bytes,
    where: str,
    source: Path,
    channels: int | None,
    image_size: int | None,
    limits: Limits,
    decoded: DecodedBudget | None = None,
) -> np.ndarray:
    """Decode to uint8 (H, W) (grayscale) or (H, W, 3), converted and resized as asked.

    The pixel count the header announces is checked against ``max_image_pixels``, and the decoded
    size of the folder's images so far (``decoded``) against ``max_uncompressed_mb``, before the
    image is decoded (inside ``pillow_pixel_limit``, which also sets Pillow's own bound).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            check_image_pixels(img.size, limits, f"{source}: {where}")
            if channels is None:
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            else:
                mode = "L" if channels == 1 else "RGB"
            if decoded is not None:
                decoded.check(where, img.size, *_decoded_bytes_per_pixel(img.mode, mode))
            img.load()
            img = img.convert(mode)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise over_limit(f"{source}: {where}", "pixel count", "max_image_pixels", limits) from None
    except PoisonDetectError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # SyntaxError: Pillow's parsers (e.g. a broken PNG chunk, a bad PPM header) raise it
        problem = f"cannot decode image {where} ({short(str(e), 160) or type(e).__name__})"
        raise _layout_error("image_folder", source, problem) from None


def read_image_folder(
    path: Path,
    *,
    limits: Limits,
    channels: int | None = None,
    image_size: int | None = None,
) -> _Raw:
    """An image folder (a directory or a tar archive, read as one stream): every member checked
    and decoded once, in one pass. (One function on purpose: a tar stream can be read only once,
    so the layout checks, the class folders and the decoding happen together as members go by.)"""
    if channels not in (None, 1, 3):
        raise PoisonDetectError(f"channels must be 1, 3 or None, got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise PoisonDetectError(
            f"image_size must be a positive integer or None, got {image_size!r}"
        )
    if path.is_dir():
        files = _iter_folder_files(path, limits)
        name = path.name
    else:
        # told by the first bytes (tarfile.is_tarfile would decompress a whole file of zeros)
        head = read_head(path)
        if kind_of(head) not in ("tar", "gzip", "bzip2", "xz"):
            raise _layout_error(
                "image_folder",
                path,
                f"neither a directory nor a tar archive (the file is {describe_head(head)})",
            )
        files = _iter_tar_files(path, limits)
        name = path.name.split(".")[0]

    entries: list[tuple[str, str, str]] = []  # (split, class, file name)
    images: list[np.ndarray] = []
    decoded = DecodedBudget(limits, str(path))
    tops: set[str] = set()
    folders: set[tuple[str, str, str]] = set()  # (top, split, class) of every class folder
    with pillow_pixel_limit(limits):
        for member, data in files:
            if data is None:  # a directory: remember class folders
                parts = [p for p in PurePosixPath(member).parts if p not in (".", "/")]
                if len(parts) == 2 and parts[0] in ("train", "test"):
                    folders.add(("", parts[0], parts[1]))
                elif len(parts) == 3 and parts[1] in ("train", "test"):
                    folders.add((parts[0], parts[1], parts[2]))
                continue
            parsed = _split_member(member)
            if parsed is None:
                continue
            top, split, cls, fname = parsed
            tops.add(top)
            entries.append((split, cls, fname))
            images.append(_decode_image(data, member, path, channels, image_size, limits, decoded))
    if len(tops) > 1:
        raise _layout_error(
            "image_folder",
            path,
            f"several top-level folders ({short(str(sorted(tops)))}); expected one",
        )

    splits: dict[str, list[int]] = {"train": [], "test": []}
    for i in sorted(range(len(entries)), key=entries.__getitem__):
        splits[entries[i][0]].append(i)
    class_lists = {s: sorted({entries[i][1] for i in idx}) for s, idx in splits.items()}
    for split, idx in splits.items():
        if not idx:
            raise _layout_error("image_folder", path, f"no images under {split}/<class>/")
    (top,) = tops
    empty = sorted(
        f"{t + '/' if t else ''}{split}/{cls}/"
        for t, split, cls in folders
        if t == top and not cls.startswith(".") and cls not in class_lists[split]
    )
    if empty:  # a class with no images would silently shift the class indices of the others
        raise _layout_error(
            "image_folder",
            path,
            f"class folder(s) {short(', '.join(empty))} hold no images; add images or remove the folder",
        )
    if class_lists["train"] != class_lists["test"]:
        raise _layout_error(
            "image_folder",
            path,
            f"train classes {short(str(class_lists['train']))} differ from test classes "
            f"{short(str(class_lists['test']))}",
        )
    classes = class_lists["train"]
    if len(classes) < 2:
        raise _layout_error(
            "image_folder",
            path,
            f"only one class ({short(classes[0])}); a classifier needs at least two class folders",
        )

    sizes = {img.shape[:2] for img in images}
    if len(sizes) > 1:
        odd = next(i for i, img in enumerate(images) if img.shape[:2] != images[0].shape[:2])
        raise _layout_error(
            "image_folder",
            path,
            f"images differ in size ({short('/'.join(entries[0]))} is {images[0].shape[:2]}, "
            f"{short('/'.join(entries[odd]))} is {images[odd].shape[:2]}); set image_size to "
            "resize them",
        )
    gray = all(img.ndim == 2 for img in images)
    n_channels = channels or (1 if gray else 3)

    def stack(indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), n_channels, *images[0].shape[:2]), dtype=np.uint8)
        for j, i in enumerate(indices):
            img = images[i]
            out[j] = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        return out

    def labels(indices: list[int]) -> np.ndarray:
        lookup = {c: k for k, c in enumerate(classes)}
        return np.array([lookup[entries[i][1]] for i in indices], dtype=np.int64)

    return _Raw(
        name=name,
        fmt="image_folder",
        x_train=stack(splits["train"]),
        y_train=labels(splits["train"]),
        x_test=stack(splits["test"]),
        y_test=labels(splits["test"]),
        classes=classes,
        pixel_max=255,
    )
