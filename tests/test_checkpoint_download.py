r"""
The downloader, offline: a local HTTP server on 127.0.0.1 serves a tiny fake tree of the 20B slim weights.
A download resumes from `NAME.part` with a `Range` request (and `If-Range`, so a file that changed on the server
is fetched whole), and a file appears under its final name only when its size matches what the server announced.
The server's misbehaviours (`Server.mode`) are shared with the hostile battery (`test_hostile.py`).
"""

import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from labml_nn.neox.checkpoint.download import DownloadError, download_20b, download_file, slim_20b_files

TREE = {"20B_tokenizer.json": b'{"model": {}}' * 50, "configs/20B.yml": b"num-layers: 44\n",
        "latest": b"global_step150000", "global_step150000/layer_00-model_00-model_states.pt": bytes(range(256)) * 40}


class Server:
    """Serves `tree` (by default `TREE`) with an `ETag` per file, honouring `Range` and `If-Range`; `mode` makes it
    misbehave: "cut" sends half the body and closes, "bad_total" announces a total size smaller than the file in
    `Content-Range`, "no_length" omits `Content-Length` (and cuts with "cut"), "no_content_range" answers 206
    without `Content-Range`, "html" answers every request with an HTML page, "ignore_if_range" resumes whatever the
    `If-Range` says."""

    def __init__(self, tree=None):
        self.mode, self.ranges, self.tree = None, [], dict(TREE if tree is None else tree)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.tree.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                mode = (server.mode or "").split("+")
                if "html" in mode:
                    page = b"<html><body>Please log in</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                etag = f'"{zlib.crc32(body):08x}-{len(body)}"'
                start = 0
                if_range = self.headers.get("If-Range")
                resume = if_range in (None, etag) or "ignore_if_range" in mode
                if "Range" in self.headers and resume:
                    server.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                    total = len(body) - 7 if "bad_total" in mode else len(body)
                    if "no_content_range" not in mode:
                        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                if "no_length" not in mode:
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if "stall" in mode:
                    # Half the body, then silence longer than the client's timeout
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    time.sleep(1.0)
                    return
                self.wfile.write(payload[: len(payload) // 2] if "cut" in mode else payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def begin_part(folder, name, n):
    """A `.part` of `n` bytes as an interrupted run leaves it, with the ETag the server gave when it began
    (which the resumed request sends as `If-Range`)."""
    body = TREE[name]
    (folder / (name + ".part")).write_bytes(body[:n])
    (folder / (name + ".part.etag")).write_text(f'"{zlib.crc32(body):08x}-{len(body)}"')


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_the_20b_file_list_has_both_ranks_of_every_stage():
    files = slim_20b_files()
    layers = [f for f in files if "/layer_" in f]
    assert len(layers) == 2 * 47 and files[:3] == ["20B_tokenizer.json", "configs/20B.yml", "latest"]
    assert "global_step150000/layer_48-model_01-model_states.pt" in layers
    assert not any(f"layer_{i:02d}-" in f for f in layers for i in (1, 46))


def test_downloads_a_tree_and_skips_complete_files(server, tmp_path):
    download_20b(tmp_path, base_url=server.url, files=list(TREE), progress=False)
    for name, body in TREE.items():
        assert (tmp_path / name).read_bytes() == body
    assert not list(tmp_path.rglob("*.part"))
    # A second run finds every file complete and asks for nothing
    server.mode = "cut"
    download_20b(tmp_path, base_url=server.url, files=list(TREE), progress=False)


def test_a_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    name = "global_step150000/layer_00-model_00-model_states.pt"
    (tmp_path / name).parent.mkdir(parents=True)
    begin_part(tmp_path, name, 1000)
    download_file(server.url + name, tmp_path / name, progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / name).read_bytes() == TREE[name]


def test_an_interrupted_download_leaves_only_a_part_file_and_resumes(server, tmp_path):
    name = "20B_tokenizer.json"
    server.mode = "cut"
    with pytest.raises(DownloadError, match="Run again to resume"):
        download_file(server.url + name, tmp_path / name, progress=False)
    assert not (tmp_path / name).exists()
    assert 0 < (tmp_path / (name + ".part")).stat().st_size < len(TREE[name])
    server.mode = None
    download_file(server.url + name, tmp_path / name, progress=False)
    assert (tmp_path / name).read_bytes() == TREE[name] and len(server.ranges) == 1


def test_a_connection_that_stalls_mid_file_is_a_download_error_and_resumes(server, tmp_path):
    name = "20B_tokenizer.json"
    server.mode = "stall"
    with pytest.raises(DownloadError, match="Run again to resume"):
        download_file(server.url + name, tmp_path / name, progress=False, timeout=0.3)
    assert not (tmp_path / name).exists() and (tmp_path / (name + ".part")).exists()
    server.mode = None
    download_file(server.url + name, tmp_path / name, progress=False)
    assert (tmp_path / name).read_bytes() == TREE[name]


def test_a_size_mismatch_leaves_no_complete_looking_file(server, tmp_path):
    name = "global_step150000/layer_00-model_00-model_states.pt"
    (tmp_path / name).parent.mkdir(parents=True)
    begin_part(tmp_path, name, 100)
    server.mode = "bad_total"
    with pytest.raises(DownloadError, match="announced"):
        download_file(server.url + name, tmp_path / name, progress=False)
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".part")).exists()


def test_a_missing_file_names_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(server.url + "nothing_here", tmp_path / "x", progress=False)
    assert not list(tmp_path.iterdir())
