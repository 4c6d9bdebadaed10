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
