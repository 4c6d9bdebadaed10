"""Bad inputs of issue 9: each stops with one line naming the file or config key and what to do,
and leaves nothing half-written."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisondetect.config import configured_classes, validate_config
from poisondetect.data import load_prepared, prepare_dataset, read_dataset
from poisondetect.errors import PoisonDetectError


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


def _folder(root: Path, classes=("cat", "dog"), per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for k, cls in enumerate(classes):
            for i in range(per_class):
                _png(root / split / cls / f"{i}.png", 40 * k + i)
    return root


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- image folders


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _folder(tmp_path / "pets", classes=("ant", "bee", "cat"))
    for f in (root / "train" / "bee").iterdir():
        f.unlink()
    with pytest.raises(PoisonDetectError) as e:
        read_dataset("image_folder", root)
    assert "train/bee/" in _one_line(e) and "no images" in str(e.value)
    # same in a tar archive (directory members are seen)
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")
    with pytest.raises(PoisonDetectError, match=r"pets/train/bee/ hold no images"):
        read_dataset("image_folder", archive)


def test_empty_class_in_both_splits_does_not_shift_class_indices(tmp_path):
    root = _folder(tmp_path / "pets", classes=("ant", "bee", "cat"))
    for split in ("train", "test"):
        for f in (root / split / "bee").iterdir():
            f.unlink()
    with pytest.raises(PoisonDetectError, match="bee"):
        read_dataset("image_folder", root)


def test_one_class_only_is_an_error(tmp_path):
    root = _folder(tmp_path / "single", classes=("only",))
    with pytest.raises(PoisonDetectError) as e:
        read_dataset("image_folder", root)
    assert str(root) in _one_line(e) and "only one class" in str(e.value)


def test_corrupt_image_names_the_file(tmp_path):
    root = _folder(tmp_path / "pets")
    (root / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "data" / "pets.npz"
    with pytest.raises(PoisonDetectError) as e:
        prepare_dataset("image_folder", root, out)
    assert "train/dog/1.png" in _one_line(e)
    assert not out.exists() and not list(out.parent.glob("*"))  # nothing half-written


def test_symlink_leading_out_of_the_folder_is_not_followed(tmp_path):
    root = _folder(tmp_path / "pets")
    secret = tmp_path / "outside" / "secret.png"
    _png(secret, 255)
    os.symlink(secret, root / "train" / "dog" / "9.png")
    with pytest.raises(PoisonDetectError) as e:
        read_dataset("image_folder", root)
    assert "train/dog/9.png" in _one_line(e) and "not followed" in str(e.value)
    # a directory link leading out is refused too
    (root / "train" / "dog" / "9.png").unlink()
    os.symlink(tmp_path / "outside", root / "train" / "bird")
    with pytest.raises(PoisonDetectError, match="train/bird is a symbolic link leading out"):
        read_dataset("image_folder", root)
    # a link that stays inside the folder is fine
    (root / "train" / "bird").unlink()
    os.symlink(root / "train" / "dog" / "0.png", root / "train" / "dog" / "5.png")
    assert len(read_dataset("image_folder", root).y_train) == 5


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes | None = None) -> Path:
    src = _folder(path.parent / "src")
    with tarfile.open(path, "w") as tar:
        tar.add(src, arcname="pets")
        tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("pets/train/cat/../../../../escape.png", tarfile.REGTYPE, "absolute path or '..'"),
        ("/tmp/pets/train/cat/abs.png", tarfile.REGTYPE, "absolute path or '..'"),
        ("pets/train/cat/link.png", tarfile.SYMTYPE, "is a link"),
        ("pets/train/cat/hard.png", tarfile.LNKTYPE, "is a link"),
    ],
)
def test_hostile_tar_members_are_refused_and_nothing_is_written(tmp_path, name, kind, expected):
    info = tarfile.TarInfo(name)
    info.type = kind
    data = None
    if kind == tarfile.REGTYPE:
        data = _png_bytes()
        info.size = len(data)
    else:
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "pets/train/cat/0.png"
    archive = _tar_with(tmp_path / "work" / "pets.tar", info, data)
    before = sorted(p for p in tmp_path.rglob("*"))
    out = tmp_path / "work" / "data" / "pets.npz"
    with pytest.raises(PoisonDetectError) as e:
        prepare_dataset("image_folder", archive, out)
    assert str(archive) in _one_line(e) and expected in str(e.value)
    assert name in str(e.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing extracted or written
    assert not Path("/tmp/pets").exists() or not (Path("/tmp/pets/train/cat/abs.png")).exists()


# --------------------------------------------------------------------------- classes


def test_prepare_checks_every_configured_class_before_writing(tmp_path):
    root = _folder(tmp_path / "pets", classes=("ant", "bee", "cat"))
    out = tmp_path / "data" / "pets.npz"
    with pytest.raises(PoisonDetectError) as e:
        prepare_dataset(
            "image_folder",
            root,
            out,
            require_classes=[("model_level.attacks.target_class", 1), ("x.classes", 5)],
        )
    msg = _one_line(e)
    assert "x.classes = 5" in msg and "3 classes (0..2: ant, bee, cat)" in msg
    assert "target_class" not in msg
    assert not out.exists()
    prepare_dataset("image_folder", root, out, require_classes=[("k", 2)])
    assert load_prepared(out).classes == ["ant", "bee", "cat"]


def _cfg(**attacks):
    return {
        "datasets": {"digits": {"format": "digits"}},
        "model_level": {"attacks": attacks},
        "sample_level": {"enabled": False},
    }


def test_config_classes_out_of_range_are_caught_at_planning_time():
    with pytest.raises(
        PoisonDetectError, match=r"attacker_class = 10 is out of range: .*10 classes"
    ):
        validate_config(_cfg(attacker_class=10))
    with pytest.raises(PoisonDetectError, match="target_class and attacker_class are both 4"):
        validate_config(_cfg(target_class=4, attacker_class=4))
    cfg = {
        "datasets": {"digits": {"format": "digits"}},
        "model_level": {"enabled": False},
        "sample_level": {
            "tasks": {"t": {"dataset": "digits", "classes": [3, 12]}},
            "run_tasks": ["t"],
        },
    }
    with pytest.raises(PoisonDetectError, match=r"sample_level\.tasks\.t\.classes = 12"):
        validate_config(cfg)
    cfg["sample_level"]["tasks"]["t"]["classes"] = [3, 3]
    with pytest.raises(PoisonDetectError, match=r"sample_level\.tasks\.t\.classes"):
        validate_config(cfg)


def test_image_folder_classes_known_from_its_folders_or_its_prepared_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "pets", classes=("ant", "bee", "cat"))
    cfg = {
        "datasets": {"pets": {"format": "image_folder", "path": str(root)}},
        "model_level": {"datasets": ["pets"], "attacks": {"target_class": 1, "attacker_class": 3}},
        "sample_level": {"enabled": False},
    }
    with pytest.raises(PoisonDetectError, match=r"attacker_class = 3 .* 3 classes .*folders of"):
        validate_config(cfg)
    # an archive: unknown until prepared; once prepared, the cache's classes are used
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")
    cfg["datasets"]["pets"]["path"] = str(archive)
    monkeypatch.chdir(tmp_path)
    validate_config(cfg)  # nothing known yet: prepare_data will check
    prepare_dataset("image_folder", archive, tmp_path / "results/data/pets.npz")
    with pytest.raises(PoisonDetectError, match=r"as prepared in results/data/pets\.npz"):
        validate_config(cfg)
    assert configured_classes(validate_config(_cfg()), "digits") == [
        ("model_level.attacks.target_class", 1),
        ("model_level.attacks.attacker_class", 7),
    ]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01])
def test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(PoisonDetectError, match=r"model_level\.attacks\.fraction"):
        validate_config(_cfg(fraction=[fraction]))
    validate_config(_cfg(fraction=[1]))


def test_fraction_check_applies_to_each_element_of_a_list():
    from poisondetect.config import _check_consistency

    cfg = validate_config(_cfg())
    cfg["model_level"]["attacks"]["fraction"] = [0.5, 1.5]
    with pytest.raises(PoisonDetectError, match=r"fraction = 1\.5 must be a number in \(0, 1\]"):
        _check_consistency(cfg, None)
    cfg["model_level"]["attacks"]["fraction"] = [0.25, 1.0]
    _check_consistency(cfg, None)


@pytest.mark.parametrize(
    "change",
    [
        {"model_level": {"datasets": []}},
        {"model_level": {"archs": []}},
        {"model_level": {"seeds": []}},
        {"model_level": {"attacks": {"kinds": []}}},
        {"model_level": {"attacks": {"epochs": []}}},
        {"sample_level": {"attacks": []}},
        {"sample_level": {"n_poison": []}},
        {"sample_level": {"run_tasks": []}},
    ],
)
def test_empty_grid_list_names_the_key(change):
    ((part, sub),) = change.items()
    ((key, value),) = sub.items()
    if isinstance(value, dict):
        ((inner, _),) = value.items()
        key = f"{key}.{inner}"
    with pytest.raises(PoisonDetectError, match=rf"config key '{part}\.{key}' = \[\]"):
        validate_config(change)
