"""Download tests against a real HTTP server on 127.0.0.1: resume with Range after a dropped
connection or a killed client, completeness and sha256 checks, mirrors, local sources, extraction."""
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import download as dl
import tinystories as ts
from dataloader import DataError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # not a multiple of any chunk size


class Server:
    """Serves self.files[name] at /name, honouring "Range: bytes=N-" and "bytes=N-M"; sent[i] counts the body
    bytes that request i got onto the wire. Knobs for misbehaviour: content_range = a Content-Range to send as is;
    drop_after[i] = send only that many body bytes on request i, then close the connection;
    sha = sha256 to advertise as ETag; corrupt = flip a byte of every body; ignore_range;
    slow = seconds to sleep per 64 KiB; lie_total = a wrong total size in Content-Range; redirect = serve /resolve/NAME as a 302 to /cdn/NAME
    with the sha in X-Linked-ETag (as Hugging Face does). framing = "length" (Content-Length), "chunked"
    (Transfer-Encoding: chunked, its last chunk only if the whole body is sent) or "close" (no length: the
    end of the connection ends the body); length_header = a Content-Length value to send as is;
    endless = send chunks forever; trickle = seconds between single bytes."""

    def __init__(self):
        self.files, self.requests, self.drop_after = {}, [], {}
        self.sha, self.corrupt, self.ignore_range, self.slow = {}, False, False, 0.0
        self.lie_total = None  # a wrong file size to announce in Content-Range
        self.content_range, self.sent = None, {}
        self.framing, self.length_header, self.endless, self.trickle = "length", None, False, 0.0
        self.busy, self.lock = 0, threading.Lock()  # requests being answered
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.busy += 1
                try:
                    self.answer()
                finally:
                    with server.lock:
                        server.busy -= 1

            def answer(self):
                n = len(server.requests)
                server.requests.append((self.path, self.headers.get("Range")))
                path = self.path.lstrip("/")
                if path.startswith("resolve/"):
                    name = path[len("resolve/"):]
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{name}")
                    if name in server.sha:
                        self.send_header("X-Linked-ETag", f'"{server.sha[name]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name = path[len("cdn/"):] if path.startswith("cdn/") else path
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                if server.corrupt:
                    body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
                start, end = 0, len(body) - 1
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    first, _, last = rng.split("=")[1].partition("-")
                    start, end = int(first), min(end, int(last or end))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    total = server.lie_total or len(body)
                    self.send_header("Content-Range", server.content_range or f"bytes {start}-{end}/{total}")
                else:
                    self.send_response(200)
                data = body[start:end + 1]
                if server.framing == "length":
                    self.send_header("Content-Length", server.length_header or str(len(data)))
                elif server.framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                if name in server.sha and not path.startswith("cdn/"):
                    self.send_header("ETag", f'"{server.sha[name]}"')
                self.end_headers()
                if n in server.drop_after:
                    data = data[:server.drop_after[n]]
                try:
                    self.send_body(data, n, whole=n not in server.drop_after)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed, or it gave up on us): what the test wants
                self.close_connection = True

            def send_body(self, data, n, whole):
                chunked = server.framing == "chunked"
                step = 1 if server.trickle else 65536
                pieces = (data[i:i + step] for i in range(0, len(data), step))
                if server.endless:
                    pieces = iter(lambda: b"x" * 65536, None)
                for piece in pieces:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    self.wfile.flush()
                    server.sent[n] = server.sent.get(n, 0) + len(piece)
                    if server.slow or server.trickle:
                        time.sleep(server.slow or server.trickle)
                if chunked and whole:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_idle(self, timeout=30):
        deadline = time.time() + timeout
        while self.busy and time.time() < deadline:
            time.sleep(0.01)
        assert not self.busy

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    s.files["blob.bin"] = PAYLOAD
    yield s
    s.close()


def test_resume_after_dropped_connection(server, tmp_path):
    server.drop_after = {0: 1_000_000}
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match="stopped at 1000000 of"):
        dl.http_download(server.url + "blob.bin", dest, retries=0)
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == 1_000_000 and not dest.exists()
    dl.http_download(server.url + "blob.bin", dest, retries=0)
    assert server.requests[1][1] == "bytes=1000000-"  # the second request resumed, not restarted
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_retries_resume_within_one_call(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)  # no back-off waits in tests
    server.drop_after = {0: 70_000, 1: 500_000}
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=2)
    assert [r for _, r in server.requests] == [None, "bytes=70000-", "bytes=570000-"]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_resume_after_killed_client(server, tmp_path, capfd):
    server.slow = 0.02  # ~3 MB/s: slow enough to kill the client mid-transfer
    dest = tmp_path / "blob.bin"
    part = tmp_path / "blob.bin.part"
    code = f"import download; download.http_download({server.url + 'blob.bin'!r}, {str(dest)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(dl.__file__)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not (part.exists() and part.stat().st_size > 300_000) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = part.stat().st_size
    assert 0 < partial < len(PAYLOAD) and not dest.exists()
    # the server's write to the dead client fails: that is expected, not a traceback among the test dots
    server.wait_idle()
    assert "Traceback" not in capfd.readouterr().err
    server.slow = 0.0
    dl.http_download(server.url + "blob.bin", dest)
    assert server.requests[-1][1] == f"bytes={partial}-"
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_is_detected(server, tmp_path):
    server.sha["blob.bin"] = hashlib.sha256(PAYLOAD).hexdigest()
    server.corrupt = True
    with pytest.raises(DataError, match="corrupt: sha256"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()
    server.corrupt = False  # the next run starts over and succeeds
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_sha256_from_redirect_header(server, tmp_path):
    # Hugging Face: the sha256 is on the 302 (X-Linked-ETag), the CDN answer has none
    server.sha["blob.bin"] = hashlib.sha256(PAYLOAD).hexdigest()
    server.corrupt = True
    with pytest.raises(DataError, match="sha256"):
        dl.http_download(server.url + "resolve/blob.bin", tmp_path / "blob.bin")
    server.corrupt = False
    dl.http_download(server.url + "resolve/blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_part_longer_than_file_restarts(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD + b"junk from an older, longer file")
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_server_without_range_restarts(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: must not be kept
    server.ignore_range = True
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_size_mismatch_is_detected(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:1000])
    server.lie_total = len(PAYLOAD) - 100  # the bytes sent and the size announced disagree
    with pytest.raises(DataError, match=f"corrupt: {len(PAYLOAD)} bytes, the server said {len(PAYLOAD) - 100}"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_short_body_is_detected(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.drop_after = {i: 10 for i in range(10)}  # every answer stops early
    with pytest.raises(DataError, match="stopped at .* run the same command again"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=2)
    assert not (tmp_path / "blob.bin").exists()


def test_cut_off_chunked_body_is_not_accepted(server, tmp_path, monkeypatch):
    """A chunked body that stops before its last chunk used to be taken as the whole file (0-byte
    dataset files, then 'nothing to do'). It is an interrupted transfer: kept in .part and resumed."""
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.framing = "chunked"
    server.drop_after = {0: 200_000}
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match="stopped at 200000 of unknown bytes; run the same command again"):
        dl.http_download(server.url + "blob.bin", dest, retries=0)
    assert not dest.exists() and (tmp_path / "blob.bin.part").stat().st_size == 200_000
    server.framing = "length"  # the next run resumes with Range (206: Content-Range gives the total)
    dl.http_download(server.url + "blob.bin", dest, retries=0)
    assert dest.read_bytes() == PAYLOAD and server.requests[-1][1] == "bytes=200000-"


def test_whole_chunked_body_is_accepted(server, tmp_path):
    server.framing = "chunked"
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_body_without_length_needs_a_hash(server, tmp_path):
    """No Content-Length and no chunked framing: the end of the connection ends the body, so a cut-off
    cannot be told from the end. Refused, unless the server's sha256 proves the bytes whole."""
    server.framing = "close"
    server.drop_after = {0: 1000}
    with pytest.raises(DataError, match="no Content-Length, no chunked framing and no sha256"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=0)
    assert not list(tmp_path.iterdir())
    server.sha["blob.bin"] = hashlib.sha256(PAYLOAD).hexdigest()
    server.drop_after = {1: 1000}
    with pytest.raises(DataError, match="corrupt: sha256"):  # cut off at 1000 bytes: the hash says so
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=0)
    server.drop_after = {}
    dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=0)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_size_cap(server, tmp_path):
    """An endless body is cut at max_bytes and deleted; a file announced larger is refused up front."""
    server.framing, server.endless = "chunked", True
    with pytest.raises(DataError, match="more than the 1000000 bytes allowed for one file; deleted it"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", max_bytes=1_000_000)
    assert not list(tmp_path.iterdir())
    server.framing, server.endless = "length", False
    with pytest.raises(DataError, match=f"the server says {len(PAYLOAD)} bytes, more than the 1000000 allowed"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", max_bytes=1_000_000)
    assert len(server.requests) == 2 and not list(tmp_path.iterdir())


@pytest.mark.slow  # seconds of waiting, by design
def test_trickle_cannot_dodge_the_deadline(server, tmp_path, monkeypatch):
    """A server sending a byte every 50 ms never trips the per-read timeout; the deadline per file (all
    attempts together) ends it, the .part kept for a later run. The stall rule drops such a connection
    and resumes on a new one."""
    server.trickle = 0.05
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"did not finish in time \(\d+ bytes so far, kept in blob.bin.part\)"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", deadline=1.5, timeout=5)
    assert time.monotonic() - t0 < 4
    assert 0 < (tmp_path / "blob.bin.part").stat().st_size < 100
    (tmp_path / "blob.bin.part").unlink()
    monkeypatch.setattr(dl, "STALL_SECONDS", 0.3)  # (time.sleep stays: the server's trickle needs it)
    n = len(server.requests)
    with pytest.raises(DataError, match="stopped at"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin", retries=2, timeout=5)
    ranges = [r for _, r in server.requests[n:]]
    assert len(ranges) == 3 and ranges[0] is None  # three stalled attempts, each resuming the one before
    assert [int(r[6:-1]) for r in ranges[1:]] == sorted(int(r[6:-1]) for r in ranges[1:]) and ranges[1] != "bytes=0-"


@pytest.mark.parametrize("value", ["abc", "-5", "12 34", "0x10"])
def test_malformed_content_length(server, tmp_path, value):
    server.length_header = value
    with pytest.raises(DataError, match=f"the server sent a malformed Content-Length '{value}'"):
        dl.http_download(server.url + "blob.bin", tmp_path / "blob.bin")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_failure_names_url_and_source(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/"
    rc = ts.main(["download", "--dataset", "v2", "--source", url, "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("error: could not download " + url + "TinyStoriesV2-GPT4-train.txt")
    assert "--source" in err[-1]


def test_http_404_names_url(server, tmp_path, capsys):
    rc = ts.main(["download", "--dataset", "v2", "--source", server.url, "--data_dir", str(tmp_path)])
    assert rc == 1
    assert "HTTP 404" in capsys.readouterr().err and not list(tmp_path.glob("*.txt"))


@pytest.fixture
def v2_files(shared):
    d = shared / "tinystories"
    return {"TinyStoriesV2-GPT4-train.txt": (d / "TinyStoriesV2-GPT4-train.head-10k-lines.txt").read_bytes(),
            "TinyStoriesV2-GPT4-valid.txt": (d / "TinyStoriesV2-GPT4-train.sample.txt").read_bytes()}


def test_download_v2_from_mirror_then_nothing_to_do(server, v2_files, tmp_path, capsys):
    server.files.update(v2_files)
    args = ["download", "--dataset", "v2", "--source", server.url, "--data_dir", str(tmp_path)]
    assert ts.main(args) == 0
    for name, data in v2_files.items():
        assert (tmp_path / name).read_bytes() == data
    n = len(server.requests)
    capsys.readouterr()
    assert ts.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and len(server.requests) == n


def _all_data_tar(shared):
    texts = json.loads((shared / "tinystories" / "tinystories-3000-stories.json").read_text())["texts"]
    shards = {f"data{i:02d}.json": json.dumps([{"story": t, "source": "x"} for t in texts[i::2]]).encode()
              for i in range(2)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in shards.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), shards, texts


def test_download_v1_extracts_via_env_source(server, shared, tmp_path, monkeypatch, capsys):
    archive, shards, texts = _all_data_tar(shared)
    server.files["TinyStories_all_data.tar.gz"] = archive
    server.sha["TinyStories_all_data.tar.gz"] = hashlib.sha256(archive).hexdigest()
    monkeypatch.setenv("STORYLLAMA_SOURCE", server.url)
    assert ts.main(["download", "--data_dir", str(tmp_path)]) == 0
    for name, data in shards.items():
        assert (tmp_path / ts.V1_DIR / name).read_bytes() == data
    files = ts.input_files(tmp_path, "v1")
    assert [f.name for f in files] == ["data00.json", "data01.json"]
    stories = [s for f in files for s in ts.iter_stories(f)]
    assert sorted(stories) == sorted(t.strip() for t in texts if t.strip())
    capsys.readouterr()
    assert ts.main(["download", "--data_dir", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.fixture
def v2_folder(v2_files, tmp_path):
    """v2_files in a local folder, for --source FOLDER."""
    src = tmp_path / "offline"
    src.mkdir()
    for name, data in v2_files.items():
        (src / name).write_bytes(data)
    return src


def test_local_folder_and_file_sources(v2_files, v2_folder, tmp_path, capsys):
    src = v2_folder
    out = tmp_path / "data"
    assert ts.main(["download", "--dataset", "v2", "--source", str(src), "--data_dir", str(out)]) == 0
    assert all((out / n).read_bytes() == d for n, d in v2_files.items())
    # a single file stands in only for the file of the same name
    one = tmp_path / "one"
    assert ts.main(["download", "--dataset", "v2", "--source", str(src / "TinyStoriesV2-GPT4-train.txt"),
                    "--data_dir", str(one)]) == 1
    assert "need a file named TinyStoriesV2-GPT4-valid.txt" in capsys.readouterr().err
    assert (one / "TinyStoriesV2-GPT4-train.txt").read_bytes() == v2_files["TinyStoriesV2-GPT4-train.txt"]


def test_unsafe_archive_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    (tmp_path / "TinyStories_all_data.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="cannot extract"):
        ts.download("v1", tmp_path)
    assert not (tmp_path.parent / "evil.json").exists() and not (tmp_path / ts.V1_DIR).exists()


# ---------------------------------------------------------------------------- slices (--max_mb)

TRAIN, VALID = ts.V2_TRAIN, "TinyStoriesV2-GPT4-valid.txt"
SLICE_MB, SLICE_BYTES = "0.25", 1 << 18  # --max_mb=0.25: the first 262,144 bytes
SLICE = "TinyStoriesV2-GPT4-train.head-0.25MiB.txt"
SEP = ts.SEP.encode()


def slice_args(source, data_dir, *more):
    return ["download", "--dataset", "v2", "--max_mb", SLICE_MB, "--source", str(source), "--data_dir", str(data_dir),
            *more]


def check_slice(data, full):
    """data is full's head ending just after a separator, and the next story would not have fitted."""
    assert full.startswith(data) and data.endswith(SEP) and len(data) <= SLICE_BYTES
    assert full.index(SEP, len(data)) + len(SEP) > SLICE_BYTES
    assert len(data) > SLICE_BYTES - 20_000  # the cut is near the limit (a story is a few KB), not at 0


def error_lines(err):
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("error", "Traceback"))]


def test_slice_from_a_range_server_then_nothing_to_do(server, v2_files, tmp_path, capsys):
    """As from Hugging Face: a redirect with the whole file's sha256 (which cannot check a slice), the
    Range carried over to the CDN."""
    server.files.update(v2_files)
    server.sha[TRAIN] = hashlib.sha256(v2_files[TRAIN]).hexdigest()
    assert ts.main(slice_args(server.url + "resolve/", tmp_path)) == 0
    assert server.requests[:2] == [(f"/resolve/{TRAIN}", f"bytes=0-{SLICE_BYTES - 1}"),
                                   (f"/cdn/{TRAIN}", f"bytes=0-{SLICE_BYTES - 1}")]
    assert server.sent[1] == SLICE_BYTES  # only the slice came over the wire
    data = (tmp_path / SLICE).read_bytes()
    check_slice(data, v2_files[TRAIN])
    assert (tmp_path / VALID).read_bytes() == v2_files[VALID]  # the held-out file comes whole
    assert not (tmp_path / TRAIN).exists() and not list(tmp_path.glob("*.part"))
    assert ts.input_files(tmp_path, "v2") == [tmp_path / SLICE, tmp_path / VALID]
    n_requests = len(server.requests)
    capsys.readouterr()
    assert ts.main(slice_args(server.url + "resolve/", tmp_path)) == 0
    assert "nothing to do" in capsys.readouterr().out and len(server.requests) == n_requests


def test_slice_from_a_server_that_ignores_range_stops_early(server, v2_files, tmp_path):
    big = v2_files[TRAIN] * 48  # 68 MB: far more than the socket buffers hold (4 MB were sent here)
    server.files.update(v2_files)
    server.files[TRAIN] = big
    assert ts.main(slice_args(server.url, tmp_path / "a")) == 0  # Range honoured: the reference slice
    server.ignore_range = True
    n = len(server.requests)
    assert ts.main(slice_args(server.url, tmp_path / "b")) == 0
    server.wait_idle()
    assert (tmp_path / "b" / SLICE).read_bytes() == (tmp_path / "a" / SLICE).read_bytes()
    check_slice((tmp_path / "b" / SLICE).read_bytes(), big)
    assert SLICE_BYTES <= server.sent[n] < len(big) // 4  # it stopped reading: the rest was never sent


@pytest.mark.parametrize("content_range, words", [
    ("bytes 0-{last}/{total}", "asked for bytes 0-262143, the server sent Content-Range 'bytes 0-{last}/{total}'"),
    ("bytes 0-999/{total}", "asked for bytes 0-262143, the server sent Content-Range 'bytes 0-999/{total}'"),
    ("bytes 0-262143/1000", "asked for bytes 0-262143, the server sent Content-Range 'bytes 0-262143/1000'"),
    ("bytes 7-262143/{total}", "server resumed at byte 7, asked for 0"),
    ("octets 0-262143/{total}", "the server sent a malformed Content-Range 'octets 0-262143/{total}'"),
])
def test_slice_with_a_wrong_content_range_is_one_line(server, v2_files, tmp_path, content_range, words):
    server.files.update(v2_files)
    full = v2_files[TRAIN]
    fill = dict(last=len(full) - 1, total=len(full))
    server.content_range = content_range.format(**fill)
    r = subprocess.run([sys.executable, "tinystories.py", *slice_args(server.url, tmp_path)],
                       cwd=os.path.dirname(os.path.abspath(ts.__file__)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and error_lines(r.stderr) == [
        f"error: download of {server.url}{TRAIN}: " + words.format(**fill)], r.stderr
    assert not list(tmp_path.iterdir())  # nothing kept: no slice, no .part


def test_slice_resumes_a_part_even_one_already_cut(server, v2_files, tmp_path):
    server.files.update(v2_files)
    assert ts.main(slice_args(server.url, tmp_path / "ref")) == 0
    want = (tmp_path / "ref" / SLICE).read_bytes()
    for have in (100_000, len(want), SLICE_BYTES):  # a dropped transfer; cut but not renamed; all bytes, not cut
        d = tmp_path / str(have)
        d.mkdir()
        (d / (SLICE + ".part")).write_bytes(v2_files[TRAIN][:have])
        n = len(server.requests)
        assert ts.main(slice_args(server.url, d)) == 0
        asked = [r for path, r in server.requests[n:] if path == "/" + TRAIN]
        assert asked == ([] if have == SLICE_BYTES else [f"bytes={have}-{SLICE_BYTES - 1}"])
        assert (d / SLICE).read_bytes() == want and not list(d.glob("*.part"))


def test_slice_from_a_local_folder_then_a_full_download(v2_files, v2_folder, tmp_path, capsys):
    src = v2_folder
    out = tmp_path / "data"
    assert ts.main(slice_args(src, out)) == 0
    check_slice((out / SLICE).read_bytes(), v2_files[TRAIN])
    assert (out / VALID).read_bytes() == v2_files[VALID] and not (out / TRAIN).exists()
    capsys.readouterr()
    assert ts.main(slice_args(src, out)) == 0 and "nothing to do" in capsys.readouterr().out
    # the whole file, asked for later, is fetched under its own name and read from then on
    assert ts.main(["download", "--dataset", "v2", "--source", str(src), "--data_dir", str(out)]) == 0
    assert (out / TRAIN).read_bytes() == v2_files[TRAIN]
    assert ts.input_files(out, "v2") == [out / TRAIN, out / VALID]
    capsys.readouterr()  # and with the whole file here, a slice has nothing to add
    assert ts.main(slice_args(src, out)) == 0 and "nothing to do" in capsys.readouterr().out


def test_slice_feeds_train_vocab_and_pretokenize(v2_folder, tmp_path):
    import dataloader
    src = v2_folder
    d = str(tmp_path / "data")
    assert ts.main(slice_args(src, d)) == 0
    assert ts.main(["train_vocab", "--dataset=v2", "--vocab_size=512", "--data_dir", d]) == 0
    assert ts.main(["pretokenize", "--dataset=v2", "--vocab_size=512", "--workers=1", "--data_dir", d]) == 0

    def n_stories(split):
        shards = (tmp_path / "data" / "tok512").glob(f"{split}_*.bin")
        return sum(dataloader.read_header(p)["n_stories"] for p in shards)
    assert n_stories("train") == len(list(ts.iter_stories(tmp_path / "data" / SLICE))) > 100
    assert n_stories("val") == len(list(ts.iter_stories(src / VALID)))
    assert ts.main(["download", "--dataset", "v2", "--source", str(src), "--data_dir", d]) == 0
    assert ts.main(["pretokenize", "--dataset=v2", "--vocab_size=512", "--workers=1", "--data_dir", d]) == 0
    assert n_stories("train") == len(list(ts.iter_stories(src / TRAIN)))  # rebuilt from the whole file


def test_cut_after_finds_the_last_marker_across_block_edges(tmp_path):
    """_cut_after scans back from the end in 1 MiB blocks: a marker across a block edge is found, as is
    one many blocks back, and the file ends just after the last one."""
    path = tmp_path / "f.txt"
    for before, after in ((100, (1 << 20) - 8), (100, 3 << 20), (0, 0), (5, 1)):
        path.write_bytes(b"a" + SEP + b"a" * before + SEP + b"b" * after)
        dl._cut_after(path, SEP, "f.txt")
        assert path.read_bytes() == b"a" + SEP + b"a" * before + SEP


def test_slice_larger_than_the_file_is_the_whole_file_cut(server, v2_files, tmp_path):
    """--max_mb alone is 100 MiB, more than this train file: its 206 answer is the whole file, so the
    server's sha256 does check it; the slice is the file up to its last separator, under the slice's name."""
    server.files.update(v2_files)
    full = v2_files[TRAIN]
    server.sha[TRAIN] = hashlib.sha256(full).hexdigest()
    args = ["download", "--dataset", "v2", "--max_mb", "--source", server.url, "--data_dir", str(tmp_path)]
    assert ts.main(args) == 0
    assert server.requests[0] == ("/" + TRAIN, f"bytes=0-{100 * 2**20 - 1}")
    assert (tmp_path / "TinyStoriesV2-GPT4-train.head-100MiB.txt").read_bytes() == full[:full.rindex(SEP) + len(SEP)]
    server.files[TRAIN] = full[:100] + b"X" + full[101:]  # not the file the hash names: refused, nothing kept
    assert ts.main([*args[:-1], str(tmp_path / "b")]) == 1
    assert not list((tmp_path / "b").glob("TinyStoriesV2-GPT4-train*"))


def test_slice_flag_errors(v2_files, tmp_path, capsys):
    src = tmp_path / "offline"
    src.mkdir()
    (src / TRAIN).write_bytes(v2_files[TRAIN])
    out = tmp_path / "data"
    for args, words in ((["--dataset", "v1", "--max_mb", "1"], "--max_mb=1.0: only with --dataset=v2"),
                        (["--dataset", "v2", "--max_mb", "0"], "--max_mb=0.0: only with --dataset=v2 (V1 is one "
                                                               ".tar.gz archive), more than 0 and at most 8192 (MiB)"),
                        (["--dataset", "v2", "--max_mb", "0.0001"], "the first 104 bytes hold no '<|endoftext|>'")):
        assert ts.main(["download", *args, "--source", str(src), "--data_dir", str(out)]) == 1
        assert words in error_lines(capsys.readouterr().err)[-1]
    assert not list(out.glob("TinyStoriesV2*"))  # the slice without a story is not kept


# ---------------------------------------------------------------------------- download_models

def test_model_zoo_from_a_mirror_checks_hashes(server, shared, tmp_path, capsys):
    models = shared / "models"
    for name in ("stories260K.bin", "tok512.bin", "tokenizer.bin", "tokenizer.model"):
        server.files[name] = (models / name).read_bytes()
    args = ["download_models", "--models", "stories260K", "llama2_tokenizer", "--source", server.url,
            "--data_dir", str(tmp_path)]
    assert ts.main(args) == 0
    for name in ("stories260K.bin", "tok512.bin", "tokenizer.bin"):
        assert (tmp_path / "models" / name).read_bytes() == (models / name).read_bytes()
    # the Llama 2 tokenizer.model goes where --vocab_source=llama2 looks for it
    import dataloader
    assert dataloader.tokenizer_path(32000, "llama2", tmp_path).read_bytes() == (models / "tokenizer.model").read_bytes()
    n = len(server.requests)
    capsys.readouterr()
    assert ts.main(args) == 0 and len(server.requests) == n and "nothing to do" in capsys.readouterr().out
    # a mirror serving another file under the name: refused by the known sha256, nothing kept
    server.files["tok512.bin"] = (models / "tokenizer.bin").read_bytes()[:6227]
    other = tmp_path / "other"
    assert ts.main(["download_models", "--models", "stories260K", "--source", server.url, "--data_dir", str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "tok512.bin is corrupt: sha256" in err[-1] and "expected 037cb335" in err[-1]
    assert not (other / "models" / "tok512.bin").exists() and not list(other.rglob("*.part"))


def test_model_zoo_local_folder_and_bad_names(shared, tmp_path, capsys):
    assert ts.main(["download_models", "--models", "stories260K", "--source", str(shared / "models"),
                    "--data_dir", str(tmp_path)]) == 0
    assert (tmp_path / "models" / "stories260K.bin").stat().st_size == 1_056_540
    assert ts.main(["download_models", "--models", "stories7B", "--data_dir", str(tmp_path)]) == 1
    assert "stories7B: unknown; choose from stories260K" in capsys.readouterr().err


def test_model_zoo_sizes_are_the_v0_headers_of_llama2c_shapes():
    """The sizes download_models expects for the models it cannot hash are llama2.c's v0 files of
    the published shapes (dim, layers, heads, 32000 tokens, context), computed by binfile's layout."""
    import binfile
    shapes = {"stories15M.bin": (288, 6, 6, 256), "stories42M.bin": (512, 8, 8, 1024),
              "stories110M.bin": (768, 12, 12, 1024)}
    for name, (dim, layers, heads, ctx) in shapes.items():
        hidden = 32 * ((int(2 * 4 * dim / 3) + 31) // 32)  # llama2.c's rule, multiple_of 32
        h = dict(version=0, dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=heads,
                 vocab_size=32000, max_seq_len=ctx, shared=True, weight_type="fp32", group_size=0)
        assert binfile.layout(h)[1] == ts.MODEL_FILES[name][2], name
