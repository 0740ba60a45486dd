"""vlmswap.atomic: a file is either its old content or the complete new one, never a fragment."""

import csv
import json
import os
import stat

import pytest

from vlmswap.atomic import atomic_path, read_csv_rows, write_bytes, write_csv, write_json, write_text


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_json_is_indented_sorted_with_trailing_newline(tmp_path):
    path = tmp_path / "deep" / "er" / "result.json"  # parents are created
    write_json(path, {"b": 1, "a": [1, 2], "p": tmp_path / "x"})
    text = path.read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert '\n  "a": [\n    1,' in text
    assert json.loads(text)["p"] == str(tmp_path / "x")
    assert leftovers(path.parent) == []


def test_write_text_and_bytes_replace_existing(tmp_path):
    path = tmp_path / "notes.md"
    write_text(path, "old")
    write_text(path, "new – ünïcode")
    assert path.read_text(encoding="utf-8") == "new – ünïcode"
    write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_written_files_have_ordinary_permissions(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_atomic_path_yields_sibling_with_same_suffix_and_replaces_on_success(tmp_path):
    path = tmp_path / "plots" / "heatmap.png"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".png" and tmp != path
        assert not path.exists()
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png"
    assert not tmp.exists()


def test_atomic_path_error_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half a ta")
            raise RuntimeError("writer crashed")
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_atomic_path_error_creates_nothing_when_no_old_file(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_write_json_unserializable_leaves_old_file(tmp_path):
    path = tmp_path / "train.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == []


def test_a_writer_killed_mid_write_leaves_nothing_after_the_next_write(tmp_path):
    """SIGKILL cannot be cleaned up after by the writer itself; the next write of the same file
    removes the dead writer's temporary file, and keeps a live writer's and another file's."""
    import signal
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "model.safetensors"
    script = textwrap.dedent(f"""
        import sys, time
        from vlmswap.atomic import atomic_path
        open_writes = [atomic_path({str(tmp_path)!r} + "/" + name) for name in ("model.safetensors", "other.json")]
        for ctx in open_writes:
            ctx.__enter__().write_bytes(b"half")
        print("ready", flush=True)
        time.sleep(600)
    """)
    killed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "ready" and live.stdout.readline().strip() == "ready"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert len(leftovers(tmp_path)) == 4  # two writers, two files each
        write_text(path, "complete")
        assert path.read_text() == "complete"
        left = leftovers(tmp_path)
        assert [n for n in left if n.startswith(".model.")] == [
            n for n in left if n.startswith(".model.") and f".{live.pid}." in n]  # only the live writer's
        assert len([n for n in left if n.startswith(".other.")]) == 2  # another destination: untouched
    finally:
        live.kill()
        live.wait()


def test_write_csv_round_trips_through_read_csv_rows_in_order(tmp_path):
    a, b = tmp_path / "a" / "one.csv", tmp_path / "two.csv"
    write_csv(a, [{"cell": "vit@cls", "auc": 0.81}, {"cell": 'quote " and, comma', "auc": ""}], ["cell", "auc"])
    write_csv(b, ({"auc": 0.5, "cell": "x"} for _ in range(2)), ["cell", "auc"])  # a generator, keys in any order
    assert a.read_text().splitlines()[0] == "cell,auc"
    with open(a, newline="") as f:  # the csv module's own reading agrees
        assert list(csv.reader(f))[2] == ['quote " and, comma', ""]
    assert read_csv_rows([a, b]) == [{"cell": "vit@cls", "auc": "0.81"}, {"cell": 'quote " and, comma', "auc": ""},
                                     {"cell": "x", "auc": "0.5"}, {"cell": "x", "auc": "0.5"}]
    assert read_csv_rows([]) == []
    assert leftovers(tmp_path) == [] and leftovers(a.parent) == []


def test_write_csv_with_an_unknown_field_leaves_the_old_file(tmp_path):
    path = tmp_path / "rows.csv"
    write_csv(path, [{"cell": "a"}], ["cell"])
    with pytest.raises(ValueError, match="score"):
        write_csv(path, [{"cell": "b", "score": 1}], ["cell"])
    assert read_csv_rows([path]) == [{"cell": "a"}]
    assert leftovers(tmp_path) == []
