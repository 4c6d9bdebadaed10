import json
import os
import signal
import subprocess
import sys
import time

import pytest

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path, read_json, write_json


def test_atomic_path_publishes_only_on_success(tmp_path):
    out = tmp_path / "sub" / "table.csv"
    with atomic_path(out) as tmp:
        tmp.write_text("a,b\n")
        assert not out.exists()
    assert out.read_text() == "a,b\n"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert out.read_text() == "a,b\n"  # the old complete file is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.csv"]  # no temp left


def test_a_writer_killed_mid_write_leaves_no_output(tmp_path):
    out = tmp_path / "big.bin"
    code = (
        "import sys, time\n"
        "from poisondetect.io import atomic_path\n"
        f"with atomic_path({str(out)!r}) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'x' * 1000); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert not out.exists()


def test_read_json_names_a_corrupt_file(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    assert read_json(p) == {"a": 1}
    p.write_text(json.dumps({"a": 1})[:-2])
    with pytest.raises(PoisonDetectError, match="m.json: not valid JSON"):
        read_json(p)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_outputs_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Results are readable as the user's umask allows, like any file the user writes (not the
    0600 of the temporary file), so a cluster group sharing the project directory can read them."""
    import numpy as np

    from poisondetect.io import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.npz") as tmp:
            np.savez(tmp, x=np.arange(3))
        (tmp_path / "plain.txt").write_text("x")  # what open() gives, for comparison
    finally:
        os.umask(old)
    for name in ("a.json", "b.npz", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_kept_json_makes_once_per_key_and_remakes_a_damaged_entry(tmp_path):
    from poisondetect.io import kept_json

    made = []
    path = tmp_path / "sub" / "m.json"

    def make():
        made.append(1)
        return {"x": len(made)}

    assert kept_json(path, {"a": 1}, make) == ({"x": 1}, False)
    assert kept_json(path, {"a": 1}, make) == ({"x": 1}, True)  # the same key: read back
    assert kept_json(path, {"a": 2}, make) == ({"x": 2}, False)  # another key: made again
    path.write_text('{"key": ')  # interrupted by hand: made again, never an error
    assert kept_json(path, {"a": 2}, make) == ({"x": 3}, False)

    def bad(value):
        raise ValueError("malformed")

    assert kept_json(path, {"a": 2}, make, load=bad) == ({"x": 4}, False)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it
