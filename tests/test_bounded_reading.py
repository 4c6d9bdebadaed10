"""Bounded reading (issue 16): inputs that would exhaust the machine are refused from what they
declare, before they are read, with one line that names them; configurable limits."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from poisondetect.archives import read_npz
from poisondetect.config import validate_config
from poisondetect.data import load_prepared, prepare_dataset, read_dataset, read_idx
from poisondetect.errors import PoisonDetectError
from poisondetect.filtering import read_training_set
from poisondetect.limits import (
    ENV_VAR,
    Limits,
    configured_limits,
    current_limits,
    kind_of,
    set_limits,
)

GIB = 1024**3

# Runs a command as its only child and reports the child's peak RSS (ru_maxrss of RUSAGE_CHILDREN
# is the largest child's: the test process's own earlier children would blur it). The child gets
# a 3 GiB address-space cap, so that a reader that does expand a bomb fails at once instead of
# taking the machine's memory.
_MEASURE = """
import json, resource, subprocess, sys, time
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
t = time.monotonic()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=cap)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout,
                  "seconds": time.monotonic() - t, "peak_mb": peak}))
"""


def _filter_measured(data: Path, tmp_path: Path, *extra: str) -> dict:
    """``poisondetect filter --data data`` in a subprocess: exit status, output, peak RSS."""
    cmd = [sys.executable, "-m", "poisondetect", "filter", "--data", str(data)]
    cmd += ["--out", str(tmp_path / "points.csv"), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,  # a reader that spins (tarfile.is_tarfile on 2 GB of zeros) fails here
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _assert_refused(result: dict, *needles: str) -> str:
    err = result["stderr"]
    assert result["rc"] == 2, result
    assert err.count("\n") == 1 and err.startswith("error: "), err  # exactly one line
    assert "allow_pickle" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert result["peak_mb"] < 400, result  # a few hundred MB: nothing was expanded
    return err


# --------------------------------------------------------------------------- crafted files


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _zeros_deflated(prefix: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``n_zeros`` zero bytes, made without compressing
    them all: after a full flush the compressor starts afresh, so one compressed MiB of zeros can be
    repeated (about 1 KB per MiB: deflate's limit of about 1:1000)."""
    mib = 1 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(bytes(mib)) + comp.flush(zlib.Z_FULL_FLUSH)
    out.append(block * (n_zeros // mib))
    out.append(comp.compress(bytes(n_zeros % mib)) + comp.flush())
    return b"".join(out)


def _zip(path: Path, members: dict[str, tuple[bytes, int, int]]) -> Path:
    """A zip archive of deflated members {name: (deflate stream, uncompressed size, CRC-32)},
    written by hand (sizes below 4 GiB each, no ZIP64)."""
    local, central, offset = [], [], 0
    for name, (data, size, crc) in members.items():
        raw = name.encode()
        sizes = (crc, len(data), size, len(raw))
        head = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0, *sizes, 0)
        entry = (b"PK\x01\x02", 20, 0, 20, 0, 0, 8, 0, 0, *sizes, 0, 0, 0, 0, 0, offset)
        central.append(struct.pack("<4s4B4HL2L5H2L", *entry) + raw)
        local.append(head + raw + data)
        offset += len(head) + len(raw) + len(data)
    cd = b"".join(central)
    n = len(members)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), offset, 0)
    path.write_bytes(b"".join(local) + cd + end)
    return path


def _npz_bomb(path: Path, gib_per_member: float = 3) -> Path:
    """A real decompression bomb: x.npy and y.npy, each a float64 array of ``gib_per_member`` GiB
    of zeros (6 GiB together, over the default limit of 4096 MB) in about 6 MB. Its CRCs are left
    0 (computing them would take seconds): a reader fails on them only after expanding it all."""
    members = {}
    for name in ("x.npy", "y.npy"):
        n = int(gib_per_member * GIB) // 8
        header = _npy_header((n,))
        members[name] = (_zeros_deflated(header, n * 8), len(header) + n * 8, 0)
    return _zip(path, members)


def _sparse_zeros(path: Path, size: int = 2 * GIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# --------------------------------------------------------------------------- the inputs


def test_decompression_bomb_npz_is_refused_from_its_declared_size(tmp_path):
    bomb = _npz_bomb(tmp_path / "bomb.npz")
    assert bomb.stat().st_size < 20 * 1024**2
    # the control: the bomb is real (numpy would allocate and fill 3 GiB for x alone)
    with np.load(bomb) as npz, npz.zip.open("x.npy") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape = np.lib.format.read_array_header_1_0(f)[0]
        assert shape[0] * 8 == 3 * GIB and f.read(1 << 20) == bytes(1 << 20)
    result = _filter_measured(bomb, tmp_path)
    _assert_refused(result, str(bomb), "declared uncompressed size", "max_uncompressed_mb")
    assert not (tmp_path / "points.csv").exists()


def test_large_zero_file_named_npz_is_refused_by_its_first_bytes(tmp_path):
    zeros = _sparse_zeros(tmp_path / "zeros.npz")
    # under a file-size limit raised above it, its first bytes refuse it
    raised = _filter_measured(zeros, tmp_path, "--limit", "max_file_mb=4096")
    err = _assert_refused(raised, str(zeros), "not an .npz file")
    assert "zero bytes" in err
    # and the default file-size limit refuses it before even that
    _assert_refused(
        _filter_measured(zeros, tmp_path),
        "file size",
        "max_file_mb = 256 MB",
        "--limit max_file_mb=N",
    )


def test_large_zero_file_named_tar_is_refused_by_its_first_bytes(tmp_path):
    zeros = _sparse_zeros(tmp_path / "zeros.tar")
    result = _filter_measured(zeros, tmp_path, "--limit", "max_file_mb=4096")
    _assert_refused(result, str(zeros), "neither a directory nor a tar archive", "zero bytes")


# --------------------------------------------------------------------------- .npz files


def test_npz_checks_name_the_member_and_never_advise_unsafe_loading(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(PoisonDetectError) as e:
        read_training_set(str(objects))
    assert "'x.npy' holds Python objects" in str(e.value) and "allow_pickle" not in str(e.value)

    single = tmp_path / "single.npz"
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(single)
    with pytest.raises(PoisonDetectError, match=r"a single \.npy array, not an \.npz"):
        read_training_set(str(single))

    header = _npy_header((10**6,))  # the header announces a million rows, the member holds 2
    crc = zlib.crc32(header + bytes(16))
    lying = _zip(
        tmp_path / "lying.npz", {"x.npy": (_zeros_deflated(header, 16), len(header) + 16, crc)}
    )
    with pytest.raises(PoisonDetectError, match=r"'x.npy' announces \(1000000,\) float64"):
        read_npz(lying)


def test_npz_member_count_and_size_limits(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **{f"a{i}": np.zeros(1000) for i in range(5)})
    assert len(read_npz(path)) == 5
    with pytest.raises(PoisonDetectError, match=r"member count \(5\) exceeds .*max_members = 4"):
        read_npz(path, limits=Limits(max_members=4))
    with pytest.raises(PoisonDetectError, match="declared uncompressed size .* max_uncompressed"):
        read_npz(path, limits=Limits(max_uncompressed_mb=0.01))


def test_the_workflow_cache_is_not_limited_by_the_size_it_was_prepared_with(tmp_path):
    out = tmp_path / "digits.npz"
    prepare_dataset("digits", None, out)
    tiny = Limits(max_file_mb=0.01, max_uncompressed_mb=0.01)
    assert len(load_prepared(out, limits=tiny).y_train) > 1000  # stored arrays: no expansion
    with pytest.raises(PoisonDetectError, match="file size"):
        read_npz(out, limits=tiny)  # the same file as a user's input is checked in full
    compressed = tmp_path / "compressed.npz"
    with np.load(out) as npz:
        np.savez_compressed(compressed, **{k: npz[k] for k in npz.files})
    with pytest.raises(PoisonDetectError, match="compressed.npz: declared uncompressed size"):
        load_prepared(compressed, limits=Limits(max_uncompressed_mb=0.01))  # may expand: checked


# --------------------------------------------------------------------------- archives and folders


def _png(value: int = 0, size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, per_class: int = 2, size: int = 4) -> Path:
    for split in ("train", "test"):
        for k, cls in enumerate(("ant", "bee")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / split / cls / f"{i}.png").write_bytes(_png(40 * k + i, size))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes, **pax: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = pax
    tar.addfile(info, io.BytesIO(data))


def test_tar_member_sizes_are_checked_from_the_headers(tmp_path):
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(_folder(tmp_path / "pets"), arcname="pets")
        _add(tar, "pets/train/ant/big.bin", bytes(3 << 20))  # 3 MiB of zeros: tiny compressed
    assert archive.stat().st_size < 100_000
    assert len(read_dataset("image_folder", archive).y_train) == 4  # within the defaults
    with pytest.raises(
        PoisonDetectError, match=r"big\.bin': size \(3\.0 MB\) exceeds .*max_file_mb"
    ):
        read_dataset("image_folder", archive, limits=Limits(max_file_mb=2))
    with pytest.raises(PoisonDetectError, match="total size of the members .* max_uncompressed_mb"):
        read_dataset("image_folder", archive, limits=Limits(max_uncompressed_mb=2))
    with pytest.raises(PoisonDetectError, match=r"member count exceeds .*max_members = 5"):
        read_dataset("image_folder", archive, limits=Limits(max_members=5))


def test_decompressed_tar_stream_is_cut_at_the_limit(tmp_path):
    """A pax header is read whole by tarfile before any member is seen: the stream itself is
    bounded (the declared size of the members alone would not catch it)."""
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.add(_folder(tmp_path / "pets"), arcname="pets")
        _add(tar, "pets/train/ant/x.png", _png(), comment="x" * (2 << 20))  # 2 MiB pax header
    limits = Limits(max_uncompressed_mb=1, max_members=20)
    with pytest.raises(PoisonDetectError, match=r"decompressed data .* max_uncompressed_mb = 1 MB"):
        read_dataset("image_folder", archive, limits=limits)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_archives_are_told_by_their_bytes(tmp_path, kind):
    src = _folder(tmp_path / "pets")
    archive = tmp_path / "data.bin"  # no telling suffix
    with tarfile.open(archive, f"w:{kind}") as tar:
        tar.add(src, arcname="pets")
    assert len(read_dataset("image_folder", archive).y_train) == 4
    not_tar = tmp_path / f"plain.{kind}"
    opener = {"gz": gzip.open, "bz2": __import__("bz2").open, "xz": __import__("lzma").open}[kind]
    with opener(not_tar, "wb") as f:
        f.write(b"hello, not a tar archive" * 40)
    with pytest.raises(PoisonDetectError, match="not a tar archive: .* whose content is"):
        read_dataset("image_folder", not_tar)


def test_folder_limits_and_image_pixels(tmp_path):
    root = _folder(tmp_path / "pets", size=16)
    assert len(read_dataset("image_folder", root).y_train) == 4
    with pytest.raises(PoisonDetectError) as e:
        read_dataset("image_folder", root, limits=Limits(max_image_pixels=200))
    assert "16 x 16 image: pixel count (256) exceeds the limit max_image_pixels = 200" in str(
        e.value
    )
    assert "test/ant/0.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PoisonDetectError, match="member count exceeds .*max_members = 5"):
        read_dataset("image_folder", root, limits=Limits(max_members=5))
    with pytest.raises(PoisonDetectError, match="size .* exceeds the limit max_file_mb"):
        read_dataset("image_folder", root, limits=Limits(max_file_mb=0.00001))


def test_image_far_over_the_pixel_limit_is_refused_by_pillow_before_decoding(tmp_path):
    root = _folder(tmp_path / "pets", size=64)  # 4096 pixels: over twice the limit below
    with pytest.raises(PoisonDetectError, match="pixel count exceeds .*max_image_pixels = 1,000"):
        read_dataset("image_folder", root, limits=Limits(max_image_pixels=1000))
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == 89_478_485  # restored (Pillow's default)


# --------------------------------------------------------------------------- IDX files


def test_gzipped_idx_announcing_too_much_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10**6, 100, 100)  # 10 GB announced
    path.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(PoisonDetectError, match=r"IDX header \(1000000, 100, 100\)"):
        read_idx(path)
    ok = tmp_path / "ok.gz"
    ok.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + bytes(5)))
    assert read_idx(ok).shape == (5,)
    ok.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + bytes(9)))
    with pytest.raises(PoisonDetectError, match="holds more bytes after the header"):
        read_idx(ok)


# --------------------------------------------------------------------------- the limits themselves


def test_limits_come_from_config_environment_and_command_line(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert configured_limits() == Limits()
    block = validate_config({"limits": {"max_members": 10}})["limits"]
    assert configured_limits(block).max_members == 10
    monkeypatch.setenv(ENV_VAR, "max_members=20,max_file_mb=1.5")
    assert configured_limits(block) == dataclasses.replace(
        Limits(), max_members=20, max_file_mb=1.5
    )
    cli = configured_limits(block, ["max_members=30"])
    assert cli.max_members == 30 and cli.max_file_mb == 1.5
    set_limits(Limits(max_members=7))
    try:
        assert current_limits().max_members == 7
    finally:
        set_limits(None)
    assert current_limits().max_members == 20  # the environment's again


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["max_members"], "expected KEY=NUMBER"),
        (["max_members=ten"], "expected KEY=NUMBER"),
        (["max_stuff=1"], "unknown limit.*max_stuff"),
        (["max_file_mb=0"], "must be a positive number"),
        (["max_members=1.5"], "must be an integer"),
    ],
)
def test_bad_limits_are_one_line_naming_them(items, message):
    with pytest.raises(PoisonDetectError, match=message) as e:
        Limits().updated(items)
    assert "\n" not in str(e.value)


def test_config_limits_are_validated_by_the_schema():
    with pytest.raises(PoisonDetectError, match=r"limits\.max_file_mb"):
        validate_config({"limits": {"max_file_mb": -1}})
    with pytest.raises(PoisonDetectError, match=r"unknown config key 'limits\.max_mb'"):
        validate_config({"limits": {"max_mb": 1}})
    assert validate_config({})["limits"] == dataclasses.asdict(Limits())


def test_kind_of_reads_the_magic_bytes():
    assert kind_of(b"PK\x03\x04rest") == "zip" and kind_of(b"\x93NUMPY\x01") == "npy"
    assert kind_of(b"\x1f\x8b\x08") == "gzip" and kind_of(b"BZh91AY") == "bzip2"
    assert kind_of(b"\xfd7zXZ\x00\x00") == "xz"
    assert kind_of(bytes(257) + b"ustar\x0000") == "tar"
    assert kind_of(b"") == "empty" and kind_of(bytes(600)) == "zeros"
    assert kind_of(b"\x80\x02}q") == "other"
