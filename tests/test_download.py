"""Downloads against a real HTTP server on 127.0.0.1: a connection dropped midway resumes, 500s are
retried, a wrong body is refused naming the file, an archive listed twice is fetched once."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlmswap.download import DownloadError, cached_path, download

BODY = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BODY).hexdigest()


class Server:
    """Serves BODY (or `bodies[name]`) at /<name>, with faults scripted per path: 'drop' (close after half the bytes,
    once), 'fail2' (HTTP 500 twice), 'wrong' (other bytes), 'missing' (404). Ranges honoured."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        self.bodies: dict[str, bytes] = {}  # other bodies than BODY, per path
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                owner.requests.append((path, self.headers.get("Range")))
                fault = owner.faults.get(path, [None]).pop(0) if owner.faults.get(path) else None
                if path.startswith("missing"):
                    self.send_error(404)
                    return
                if fault == "500":
                    self.send_error(500)
                    return
                body = b"not the archive" * 100 if path.startswith("wrong") else owner.bodies.get(path, BODY)
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault == "drop":  # half of what was promised, then the connection goes away
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def fast(**kw):
    return {"backoff": 0.01, "timeout": 10, "log": lambda m: None, **kw}


def test_a_connection_dropped_midway_resumes_from_where_it_stopped(server, tmp_path):
    server.faults["drop.zip"] = ["drop"]
    digest = download(f"{server.url}/drop.zip", tmp_path / "out" / "drop.zip", cache=tmp_path / "cache", **fast())
    assert digest == SHA and (tmp_path / "out" / "drop.zip").read_bytes() == BODY
    assert server.requests == [("drop.zip", None), ("drop.zip", f"bytes={len(BODY) // 2}-")]


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    server.faults["flaky.zip"] = ["500", "500"]
    said = []
    download(f"{server.url}/flaky.zip", tmp_path / "flaky.zip", cache=tmp_path / "cache",
             **fast(log=said.append, sha256=SHA))
    assert len(server.requests) == 3 and sum("attempt" in m for m in said) == 2


def test_a_wrong_body_is_refused_naming_the_url_and_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match=r"wrong\.zip.*sha256 mismatch for wrong\.zip: expected " + SHA):
        download(f"{server.url}/wrong.zip", tmp_path / "wrong.zip", cache=tmp_path / "cache", **fast(sha256=SHA))
    assert not (tmp_path / "wrong.zip").exists()
    assert not list((tmp_path / "cache").rglob("*.part")) and not list((tmp_path / "cache").rglob("wrong.zip"))


def test_not_found_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "m.zip", cache=tmp_path / "cache", **fast())
    assert len(server.requests) == 1


def test_giving_up_keeps_the_partial_file_for_the_next_run(server, tmp_path):
    server.faults["down.zip"] = ["500"] * 3
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download(f"{server.url}/down.zip", tmp_path / "d.zip", cache=tmp_path / "cache", **fast(attempts=3))
    download(f"{server.url}/down.zip", tmp_path / "d.zip", cache=tmp_path / "cache", **fast())
    assert (tmp_path / "d.zip").read_bytes() == BODY


def test_an_archive_listed_twice_is_downloaded_once_and_not_stored_twice(server, tmp_path):
    url = f"{server.url}/images.zip"
    download(url, tmp_path / "instruct" / "images.zip", cache=tmp_path / "cache", **fast())
    download(url, tmp_path / "tallyqa" / "images.zip", cache=tmp_path / "cache", **fast())
    assert server.requests == [("images.zip", None)]
    cached = cached_path(url, tmp_path / "cache")
    assert (tmp_path / "tallyqa" / "images.zip").stat().st_ino == cached.stat().st_ino  # a hard link


def test_a_hub_snapshot_is_linked_from_the_hub_cache_not_copied(tmp_path, monkeypatch):
    """A hub cache snapshot (entries are symlinks into blobs/) becomes the fetched folder by hard
    links: the LLM's bytes exist once on disk."""
    import huggingface_hub

    from vlmswap.hub import fetch

    cache = tmp_path / "hub" / "models--lmsys--vicuna-7b-v1.5"
    (cache / "blobs").mkdir(parents=True)
    snapshot = cache / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name, data in (("config.json", b"{}"), ("tokenizer.model", b"sp" * 100), ("pytorch_model-00001-of-00002.bin", BODY)):
        blob = cache / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(repo) or str(snapshot))
    record = fetch({"hub": "lmsys/vicuna-7b-v1.5"}, tmp_path / "llm", offline=False, log=lambda m: None)
    assert calls == ["lmsys/vicuna-7b-v1.5"] and record.origin.startswith("hf://lmsys/vicuna-7b-v1.5")
    weights = tmp_path / "llm" / "pytorch_model-00001-of-00002.bin"
    assert not weights.is_symlink() and weights.read_bytes() == BODY
    assert weights.stat().st_ino == (snapshot / weights.name).resolve().stat().st_ino


def test_a_timm_tag_without_safetensors_falls_back_to_the_bin(tmp_path, monkeypatch):
    """timm/vit_large_patch14_clip_224.openai ships only pytorch_model.bin: fetched like timm does."""
    import huggingface_hub
    import torch
    from huggingface_hub.errors import EntryNotFoundError

    from vlmswap.checkpoint import read_checkpoint
    from vlmswap.hub import fetch

    weights = tmp_path / "pytorch_model.bin"
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, weights)
    asked = []

    def hf_hub_download(repo, name, **kw):
        asked.append(name)
        if name == "model.safetensors":
            raise EntryNotFoundError(f"{repo} has no {name}")
        return str(weights)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    fetch({"timm": "vit_large_patch14_clip_224.openai"}, tmp_path / "clip-l.ckpt", offline=False, log=lambda m: None)
    assert asked == ["model.safetensors", "pytorch_model.bin"]
    assert set(read_checkpoint(tmp_path / "clip-l.ckpt")) == {"cls_token"}


def test_a_second_source_is_tried_when_the_first_host_is_down(server, tmp_path, monkeypatch):
    """RefCOCO's host goes down for long spells: the config lists a second source (`also:`)."""
    from vlmswap.dataset_files import fetch_files

    import vlmswap.download as dl

    monkeypatch.setattr(dl, "DEFAULT_CACHE", tmp_path / "cache")  # the cache of this test only
    said = []
    records = fetch_files([{"url": f"{server.url}/missing/refcoco.zip", "also": [f"{server.url}/refcoco.zip"],
                            "name": "refcoco.zip"}], tmp_path / "data", offline=False, log=said.append)
    assert (tmp_path / "data" / "refcoco.zip").read_bytes() == BODY and records[0]["sha256"] == SHA
    assert [p for p, _ in server.requests] == ["missing/refcoco.zip", "refcoco.zip"]
    assert any("trying the next source" in m for m in said)


# The two inputs that were placed by hand until they got direct sources (issue 17): the entries are
# read from config/experiments.yaml and served from 127.0.0.1 under the same URL paths.

def _paper_entry(section: list[dict], url_part: str, server) -> dict:
    import urllib.parse

    entry = next(dict(e) for e in section if url_part in e["url"])
    entry["url"] = server.url + urllib.parse.urlparse(entry["url"]).path
    return entry


def _paper() -> dict:
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "experiments.yaml").read_text())


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _image(fmt: str, colour: tuple[int, int, int], frames: int = 1) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    first, *rest = [Image.new("RGB", (8, 6), colour if i == 0 else (0, 0, 255)) for i in range(frames)]
    first.save(buf, format=fmt, save_all=bool(rest), append_images=rest)
    return buf.getvalue()


@pytest.mark.parametrize("top", ["ocr_vqa_release/", ""])  # one top folder, renamed; or members at the root
def test_ocr_vqa_images_unpack_to_the_folder_the_mix_names_with_a_jpg_beside_each_gif_and_png(
        server, tmp_path, monkeypatch, top):
    from PIL import Image

    import vlmswap.download as dl
    from vlmswap.dataset_files import fetch_files

    monkeypatch.setattr(dl, "DEFAULT_CACHE", tmp_path / "cache")
    entry = _paper_entry(_paper()["instruct"]["files"], "ocr_vqa", server)
    assert entry["extract_as"] == "images" and entry["to_jpg"] and entry["into"] == "ocr_vqa"
    server.bodies[entry["url"][len(server.url) + 1:]] = _zip({
        f"{top}1.gif": _image("GIF", (255, 0, 0), frames=2), f"{top}2.png": _image("PNG", (0, 255, 0)),
        f"{top}3.jpg": _image("JPEG", (9, 9, 9)), f"{top}notes.txt": b"not an image"})
    root = tmp_path / "data" / "llava-v1.5-instruct"
    said = []
    records = fetch_files([entry], root, offline=False, log=said.append)
    images = root / "ocr_vqa" / "images"  # where llava_v1_5_mix665k.json's "ocr_vqa/images/<id>.jpg" point
    assert sorted(p.name for p in images.iterdir()) == ["1.gif", "1.jpg", "2.jpg", "2.png", "3.jpg", "notes.txt"]
    assert records[0]["extracted"] == 4 and records[0]["converted"] == 2
    with Image.open(images / "1.jpg") as gif_frame, Image.open(images / "2.jpg") as png:
        assert gif_frame.format == png.format == "JPEG" and gif_frame.mode == "RGB"
        red, green = gif_frame.getpixel((3, 3)), png.getpixel((3, 3))
        assert red[0] > 200 and red[2] < 60 and green[1] > 200  # the GIF's first frame, not its second
    assert not list((root / "ocr_vqa").glob(".unpacking-*")) and not (root / "ocr_vqa" / "ocr_vqa.zip").exists()
    assert any("neither GIF, PNG nor JPG" in m for m in said)

    (images / "2.jpg").unlink()  # a rerun keeps the folder, fetches nothing, converts what is missing
    again = fetch_files([entry], root, offline=False, log=said.append)
    assert len(server.requests) == 1 and again[0]["converted"] == 1 and (images / "2.jpg").exists()
    assert any("is not fetched again" in m for m in said)


def test_a_bad_image_in_the_archive_is_named(server, tmp_path, monkeypatch):
    import vlmswap.download as dl
    from vlmswap.dataset_files import fetch_files
    from vlmswap.hub import FetchError

    monkeypatch.setattr(dl, "DEFAULT_CACHE", tmp_path / "cache")
    server.bodies["bad.zip"] = _zip({"images/7.gif": b"GIF89a but truncated"})
    entry = {"url": f"{server.url}/bad.zip", "into": "ocr_vqa", "extract": True, "extract_as": "images", "to_jpg": True}
    with pytest.raises(FetchError, match=r"ocr_vqa/images/7\.gif: cannot be read as an image"):
        fetch_files([entry], tmp_path / "data", offline=False, log=lambda m: None)
    with pytest.raises(FetchError, match="add `extract: true`"):
        fetch_files([{"url": f"{server.url}/bad.zip", "to_jpg": True}], tmp_path / "data", offline=False)


def test_textvqa_ocr_questions_are_fetched_to_where_the_loader_reads_them(server, tmp_path, monkeypatch):
    import vlmswap.download as dl
    from vlmswap.dataset_files import fetch_files
    from vlmswap.evaluate.textvqa import QUESTIONS_FILE

    monkeypatch.setattr(dl, "DEFAULT_CACHE", tmp_path / "cache")
    entry = _paper_entry(_paper()["benchmarks"]["textvqa"]["files"], QUESTIONS_FILE, server)
    line = b'{"question_id": 34602, "image": "0054c91397f2fe05.jpg", "text": "what is the brand?"}\n'
    server.bodies[entry["url"][len(server.url) + 1:]] = line
    fetch_files([entry], tmp_path / "data" / "textvqa", offline=False, log=lambda m: None)
    assert (tmp_path / "data" / "textvqa" / QUESTIONS_FILE).read_bytes() == line
