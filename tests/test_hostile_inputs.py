"""Issue 21, items 2-4: the bombs, special files, hostile configs and outputs of a hostile user.

Every input here is small on disk (generated in tmp_path: compressed zeros are tiny) and claims
to be large. Each must be refused with exit status 2 and one ``error:`` line, quickly (seconds)
and in a few hundred MB of memory (the subprocess runs under a 3 GiB address-space cap and its
peak RSS is measured; see ``test_bounded_reading``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_bounded_reading import (
    GIB,
    _assert_refused,
    _npz_bomb,
    _zeros_deflated,
)

from poisondetect.__main__ import configfiles_of, main
from poisondetect.config import read_config_file
from poisondetect.data import load_prepared, prepare_dataset
from poisondetect.errors import PoisonDetectError, short_repr
from poisondetect.filtering import read_training_set, run_filter
from poisondetect.io import atomic_path, check_output_path
from poisondetect.limits import ENV_VAR, Limits

# As test_bounded_reading's, with the child's CPU time: on a loaded machine (CI runners, two
# cores shared) the wall-clock time measures the neighbours, the CPU time the command.
_MEASURE = """
import json, resource, subprocess, sys, time
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
t = time.monotonic()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=cap)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout,
                  "seconds": time.monotonic() - t, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_mb": usage.ru_maxrss / 1024}))
"""


def _measured(tmp_path: Path, *args: str) -> dict:
    """``python -m poisondetect ARGS`` in a subprocess under a 3 GiB cap: status, output, time,
    peak RSS."""
    cmd = [sys.executable, "-m", "poisondetect", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _quick_refusal(result: dict, *needles: str) -> str:
    err = _assert_refused(result, *needles)  # exit 2, one line, peak RSS < 400 MB
    assert result["cpu_seconds"] < 10, result  # the bound: 10 s (and 1 GB: 400 MB here)
    assert "rerun the prepare step" not in err and "delete it" not in err  # no cache advice
    return err


def test_defaults_stay_below_a_laptops_memory():
    limits = Limits()
    assert limits.max_file_mb <= 256 and limits.max_uncompressed_mb <= 256
    assert limits.max_image_pixels * 3 <= 256 * 1024**2


# --------------------------------------------------------------------------- .npz bombs


def test_small_npz_declaring_2_gib_is_refused_by_filter_and_audit(tmp_path):
    bomb = _npz_bomb(tmp_path / "bomb.npz", gib_per_member=1)  # 2 GiB declared, ~2 MB on disk
    assert bomb.stat().st_size < 4 * 1024**2
    out = str(tmp_path / "points.csv")
    filtered = _measured(tmp_path, "filter", "--data", str(bomb), "--out", out)
    _quick_refusal(filtered, "declared uncompressed size", "max_uncompressed_mb = 256 MB")
    audited = _measured(tmp_path, "audit", "--bundle", "b", "--model", "m", "--data", str(bomb))
    err = _quick_refusal(audited, f"--data {bomb}", "max_uncompressed_mb = 256 MB")
    assert "prepared .npz" in err or "max_uncompressed_mb" in err


def _stored_npz(path: Path, mb: float) -> Path:
    """A prepared-looking .npz whose arrays are stored (not compressed): its size is its data."""
    n = int(mb * 1024**2)
    arrays = {
        "version": np.int64(1),
        "name": np.str_("d"),
        "format": np.str_("digits"),
        "classes": np.array(["0", "1"]),
        "pixel_max": np.int64(255),
        "x_train": np.zeros((n // 64, 1, 8, 8), np.uint8),
        "y_train": np.zeros(n // 64, np.int64),
        "x_test": np.zeros((1, 1, 8, 8), np.uint8),
        "y_test": np.zeros(1, np.int64),
    }
    np.savez(path, **arrays)
    return path


def test_audit_data_obeys_every_limit_of_a_users_file(tmp_path):
    """The issue's 300 MB stored .npz under max_file_mb=100 max_uncompressed_mb=100, scaled down:
    a 3 MB stored .npz under limits of 2 MB (file) and then 2 MB (declared, with the file-size
    limit raised): stored members are a user's data like any other."""
    data = _stored_npz(tmp_path / "prepared.npz", 3)
    with zipfile.ZipFile(data) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    base = ["audit", "--bundle", "b", "--model", "m", "--data", str(data)]
    small = _measured(
        tmp_path, *base, "--limit", "max_file_mb=2", "--limit", "max_uncompressed_mb=2"
    )
    _quick_refusal(small, f"--data {data}", "file size", "max_file_mb = 2 MB")
    declared = _measured(
        tmp_path, *base, "--limit", "max_file_mb=100", "--limit", "max_uncompressed_mb=2"
    )
    _quick_refusal(declared, f"--data {data}", "declared uncompressed size", "max_uncompressed_mb")


def test_a_users_prepared_file_never_gets_cache_advice(tmp_path):
    out = tmp_path / "d.npz"
    prepare_dataset("digits", None, out)
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(PoisonDetectError) as err:
        load_prepared(out, user_file=True, label=f"--data {out}")
    assert f"--data {out}" in str(err.value) and "delete it" not in str(err.value)
    with pytest.raises(PoisonDetectError, match="delete it and rerun the prepare step"):
        load_prepared(out)  # the workflow's own cache: its advice stays
    assert main(["audit", "--bundle", "b", "--model", "m", "--data", str(out)]) == 2
    # labels that are not integers (NaN) in a user's prepared file: refused naming --data
    prepare_dataset("digits", None, out)
    arrays = dict(np.load(out))
    arrays["y_test"] = np.where(np.arange(len(arrays["y_test"])) == 0, np.nan, 1.0)
    np.savez(out, **arrays)
    with pytest.raises(PoisonDetectError, match=f"--data {out}: not a valid prepared data set"):
        load_prepared(out, user_file=True, label=f"--data {out}")
    # the audit reads a user's --data before anything else: refused naming it, exit 2
    assert main(["audit", "--bundle", "b", "--model", "m", "--data", str(out)]) == 2


# --------------------------------------------------------------------------- archives and images


def _gzip_of_raw_deflate(raw: bytes, size: int) -> bytes:
    """A gzip file around a raw deflate stream (CRC left 0: a reader stops long before it)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", 0, size % 2**32)


def _tar_gz_with_huge_member(path: Path, size: int = 2 * GIB) -> Path:
    info = tarfile.TarInfo("pets/train/ant/big.png")
    info.size = size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    path.write_bytes(_gzip_of_raw_deflate(_zeros_deflated(header, size), len(header) + size))
    return path


def test_tar_gz_with_a_2_gib_member_is_refused_from_its_header(tmp_path):
    archive = _tar_gz_with_huge_member(tmp_path / "pets.tar.gz")
    assert archive.stat().st_size < 4 * 1024**2
    # the control: the member really is 2 GiB of zeros behind a valid header
    with tarfile.open(archive, "r|gz") as tar:
        member = next(iter(tar))
        assert member.size == 2 * GIB and tar.extractfile(member).read(1 << 20) == bytes(1 << 20)
    out = str(tmp_path / "points.csv")
    result = _measured(tmp_path, "filter", "--data", str(archive), "--out", out)
    _quick_refusal(result, "big.png", "max_file_mb = 256 MB")
    raised = _measured(
        tmp_path, "filter", "--data", str(archive), "--out", out, "--limit", "max_file_mb=4096"
    )
    _quick_refusal(raised, "total size of the members", "max_uncompressed_mb = 256 MB")


def _palette_png(width: int, height: int) -> bytes:
    """A palette PNG of ``width`` x ``height`` zeros, written by hand (Pillow would build the whole
    image in memory first): about 90 KB for 9400 x 9400."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    comp, rows, parts = zlib.compressobj(9), b"\x00" + bytes(width), []
    block = rows * 256
    for _ in range(height // 256):
        parts.append(comp.compress(block))
    parts += [comp.compress(rows * (height % 256)), comp.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", ihdr),
            chunk(b"PLTE", bytes(6)),
            chunk(b"IDAT", b"".join(parts)),
            chunk(b"IEND", b""),
        ]
    )


def _palette_folder(root: Path, size: int, per_class: int = 1, extra: int = 2) -> Path:
    png = _palette_png(size, size)
    names = [(s, c, i) for s in ("train", "test") for c in ("ant", "bee") for i in range(per_class)]
    names += [("train", "ant", per_class + i) for i in range(extra)]
    for split, cls, i in names:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        (root / split / cls / f"{i}.png").write_bytes(png)
    return root


def test_six_big_palette_pngs_are_refused_before_decoding(tmp_path):
    root = _palette_folder(tmp_path / "pets", 9400)  # six images, 88 million pixels each
    assert sum(p.stat().st_size for p in root.rglob("*.png")) < 1024**2
    out = str(tmp_path / "points.csv")
    # the defaults: one image is over max_image_pixels already
    result = _measured(tmp_path, "filter", "--data", str(root), "--out", out)
    _quick_refusal(result, "pixel count", "max_image_pixels")
    # with the pixel bound raised: decoding one (palette, then RGB, then the array) would take
    # 7 bytes a pixel, 590 MB: refused from its header
    raised = _measured(
        tmp_path, "filter", "--data", str(root), "--out", out, "--limit", "max_image_pixels=1e8"
    )
    _quick_refusal(raised, "decoding the 9400 x 9400 image (7 bytes a pixel", "max_uncompressed_mb")


def test_palette_images_count_at_their_rgb_size_across_the_folder(tmp_path):
    from poisondetect.data import read_dataset

    root = _palette_folder(tmp_path / "pets", 100, extra=0)  # four 100 x 100 palette images
    # 100 x 100 x 3 = 30,000 bytes each: three fit in 100 KB, four do not (at 1 byte a pixel
    # they would)
    with pytest.raises(PoisonDetectError, match="decoded size of the images .*max_uncompressed_mb"):
        read_dataset("image_folder", root, limits=Limits(max_uncompressed_mb=100 / 1024))
    assert len(read_dataset("image_folder", root, limits=Limits(max_uncompressed_mb=0.2)).y_train)


# --------------------------------------------------------------------------- special files


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)
    return path


def _npz(path: Path, x=None, y=None) -> Path:
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32) if x is None else x
    y = np.repeat([0, 1], 10) if y is None else y
    np.savez(path, x=x, y=y)
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("which", ["fifo", "dir", "device"])
def test_special_files_as_inputs_are_refused_at_once(tmp_path, fifo, capsys, which):
    special = {"fifo": str(fifo), "dir": str(tmp_path), "device": "/dev/zero"}[which]
    data = str(_npz(tmp_path / "ok.npz"))
    out = str(tmp_path / "points.csv")
    kind = {"fifo": "a FIFO", "dir": "a directory", "device": "a device"}[which]
    err = _one_line_error(capsys, ["filter", "--data", data, "--out", out, "--config", special])
    assert f"--config {special}: {kind}" in err
    if which != "dir":  # a directory is an image folder to --data
        err = _one_line_error(capsys, ["filter", "--data", special, "--out", out])
        assert special in err and kind in err
    err = _one_line_error(capsys, ["audit", "--bundle", "b", "--model", "m", "--data", special])
    assert f"--data {special}: {kind}" in err
    err = _one_line_error(capsys, ["audit", "--bundle", special, "--model", data])
    assert special in err and kind in err
    from poisondetect.checkpoints import load_state_dict_safely

    for name in ("model.safetensors", "model.pt"):  # --model, either format
        link = tmp_path / name
        link.symlink_to(special)
        with pytest.raises(PoisonDetectError, match=kind):
            load_state_dict_safely(link)


def test_an_oversized_config_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2 * GIB)  # sparse: nothing is read
    with pytest.raises(PoisonDetectError, match="too large for a config file"):
        read_config_file(big)


# --------------------------------------------------------------------------- hostile YAML

# 404 bytes that expand to billions of items (the "billion laughs"), and a short one whose
# expansion is one huge value that a careless message would print whole.
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
WIDE_ALIAS = "a: &a " + "x" * 200 + "\nb: [" + ",".join(["*a"] * 60) + "]\n"


@pytest.mark.parametrize("text", [ALIAS_BOMB, WIDE_ALIAS], ids=["billion-laughs", "wide"])
def test_yaml_aliases_are_refused_with_one_short_line(tmp_path, capsys, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    data = str(_npz(tmp_path / "ok.npz"))
    err = _one_line_error(
        capsys, ["filter", "--data", data, "--out", str(tmp_path / "o.csv"), "--config", str(cfg)]
    )
    assert "alias" in err and len(err) < 400


def test_deep_nesting_and_long_values_are_refused_with_an_excerpt(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PoisonDetectError, match="nesting deeper than"):
        read_config_file(deep)
    long = tmp_path / "long.yaml"
    long.write_text("model_level:\n  train:\n    epochs: '" + "9" * 500_000 + "'\n")
    data = str(_npz(tmp_path / "ok.npz"))
    err = _one_line_error(
        capsys, ["filter", "--data", data, "--out", str(tmp_path / "o.csv"), "--config", str(long)]
    )
    assert "model_level.train.epochs" in err and len(err) < 1000
    many = tmp_path / "many.yaml"
    many.write_text("".join(f"k{i}: 1\n" for i in range(5000)))
    err = _one_line_error(
        capsys, ["filter", "--data", data, "--out", str(tmp_path / "o.csv"), "--config", str(many)]
    )
    assert "more" in err and len(err) < 5000


def test_short_repr_never_echoes_a_whole_value():
    assert len(short_repr("x" * 10**6)) < 120
    assert short_repr(list(range(10**6))) == "<a list of 1,000,000 items>"


def test_poisondetect_run_checks_every_configfile_before_snakemake(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model_level:\n  note: caf\xe9\n")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert configfiles_of(["--cores", "1", "--configfile", "a", "b", "-n", "--configfile=c"]) == [
        "a",
        "b",
        "c",
    ]
    for bad in (latin, bomb):
        err = _one_line_error(capsys, ["run", "--cores", "1", "--configfile", str(bad)])
        assert f"--configfile {bad}" in err


# --------------------------------------------------------------------------- data values


@pytest.mark.parametrize(
    "x, y, needle",
    [
        (None, np.r_[np.zeros(10), np.full(10, np.nan)], "y holds NaN"),
        (None, np.r_[np.zeros(10), np.full(10, 1.5)], "non-integer labels"),
        (None, np.array(["a", "b"] * 10), "labels must be integers"),
        (np.array([["a"]] * 20), None, "x holds <U1 values, not numbers"),
        (np.full((20, 4), np.nan), None, "x holds NaN or infinite values on 20 of 20 rows"),
        (np.zeros(20), None, "x has shape"),
    ],
)
def test_x_and_y_are_checked_naming_data(tmp_path, x, y, needle):
    path = _npz(tmp_path / "d.npz", x, y)
    with pytest.raises(PoisonDetectError) as err:
        read_training_set(str(path))
    assert needle in str(err.value) and f"--data {path}" in str(err.value)


def test_integer_valued_float_labels_are_accepted(tmp_path):
    path = _npz(tmp_path / "d.npz", y=np.repeat([3.0, 7.0], 10))
    _x, y, classes, _ = read_training_set(str(path))
    assert classes == [3, 7] and set(y) == {0, 1}


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("target", ["/dev/null", "/dev/stdout", "dir", "fifo"])
def test_out_refuses_anything_but_a_regular_file(tmp_path, fifo, capsys, target):
    out = {"dir": str(tmp_path), "fifo": str(fifo)}.get(target, target)
    data = str(_npz(tmp_path / "ok.npz"))
    err = _one_line_error(capsys, ["filter", "--data", data, "--out", out])
    assert f"--out {out}: exists and is" in err or f"--out {out}: a file of the system" in err
    if target == "/dev/null":
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # never replaced
    with (
        pytest.raises(PoisonDetectError, match="not a regular file|a file of the system"),
        atomic_path(out) as tmp,
    ):
        tmp.write_text("x")


def test_out_leading_into_proc_is_refused_though_it_resolves_to_a_file(tmp_path):
    """A link to /proc/self/fd/N (what /dev/stdout is) resolves to whatever file the descriptor
    has open: os.path.realpath sees a regular file, but the rename would replace the link."""
    with (tmp_path / "console.txt").open("w") as console:
        link = tmp_path / "scores.csv"
        link.symlink_to(f"/proc/self/fd/{console.fileno()}")
        assert os.path.isfile(os.path.realpath(link))  # what the check must not trust
        (tmp_path / "via.csv").symlink_to(link)  # a link to that link: found hop by hop
        # `..` after a linked folder is that folder's parent (the kernel's reading), not the
        # text's: shm/../stdout is /dev/stdout
        (tmp_path / "shm").symlink_to("/dev/shm")
        (tmp_path / "dots.csv").symlink_to(tmp_path / "shm/../stdout")
        for out in (link, tmp_path / "via.csv", tmp_path / "shm/../null", tmp_path / "dots.csv"):
            with pytest.raises(PoisonDetectError, match="a file of the system"):
                check_output_path(out, "--out")
    assert link.is_symlink()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(PoisonDetectError, match="a loop of symbolic links"):
        check_output_path(tmp_path / "a", "--out")
    # what stays allowed: a link to a regular file, a linked results folder, a new file
    (tmp_path / "real.csv").write_text("")
    (tmp_path / "to_real.csv").symlink_to(tmp_path / "real.csv")
    (tmp_path / "disk").mkdir()
    (tmp_path / "results").symlink_to(tmp_path / "disk")
    for out in ("to_real.csv", "results/sub/points.csv", "new.csv"):
        check_output_path(tmp_path / out, "--out")


# Run in the child instead of `python -m poisondetect`: a rename onto anything in /dev stops the
# child, so that a broken check cannot replace the machine's /dev/stdout (the tests run as root).
_GUARDED_MAIN = """import os, sys
rename = os.replace
def guarded(src, dst, *args, **kwargs):
    if os.path.abspath(dst).startswith("/dev/"):
        sys.exit(f"test guard: would have replaced {dst}")
    return rename(src, dst, *args, **kwargs)
os.replace = guarded
from poisondetect.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_out_dev_stdout_with_the_output_redirected_to_a_file(tmp_path):
    """`poisondetect filter ... --out /dev/stdout > log`: refused in one line (as root, the rename
    used to replace /dev/stdout with the scores file)."""
    data = str(_npz(tmp_path / "ok.npz"))
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-c", _GUARDED_MAIN, "filter", "--data", data, "--out", "/dev/stdout"],
            stdout=out, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "a file of the system" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert os.path.islink("/dev/stdout") and console.read_text() == ""


def test_an_unwritable_out_is_found_before_any_fitting(tmp_path, monkeypatch):
    import poisondetect.filtering as filtering

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def never(*_a, **_k):
        raise AssertionError("the data were read before --out was checked")

    monkeypatch.setattr("poisondetect.io.os.fsync", no_space)
    monkeypatch.setattr(filtering, "read_training_set", never)
    out = tmp_path / "sub" / "points.csv"
    with pytest.raises(PoisonDetectError) as err:
        run_filter(str(tmp_path / "ok.npz"), str(out))
    assert f"--out {out}: cannot write in its folder" in str(err.value)
    assert "no space left" in str(err.value) and ".probe" not in str(err.value)
    assert list((tmp_path / "sub").iterdir()) == []  # the probe is removed


def test_check_output_path_leaves_nothing_behind(tmp_path):
    check_output_path(tmp_path / "a" / "b.csv", "--out b.csv")
    assert list((tmp_path / "a").iterdir()) == []


def test_a_write_error_names_the_output_not_its_temporary_file(tmp_path):
    out = tmp_path / "points.csv"
    with pytest.raises(OSError) as err, atomic_path(out) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert err.value.filename == str(out)
