"""
download.py: resumable, verified HTTP downloads (and local copies) for the data commands.

    http_download(url, dest)         # dest.part, resumed with Range requests, renamed when complete
    http_download(url, dest, head=N, cut_after=b"<|endoftext|>")   # only the file's first N bytes
    fetch(name, dest_dir, source)    # from a base URL, a mirror URL, a local folder or a local file

A file is complete when its size is the total the server gave (Content-Length/Content-Range) and,
if the server gives a sha256 (Hugging Face sends X-Linked-ETag on its redirect), its hash matches.
A body of unknown length counts only when its framing proves it whole (the last chunk of a chunked
body) or the sha256 matches. Limits: max_bytes per file, a deadline per file (all attempts
together), and an attempt that stalls (under STALL_BYTES in STALL_SECONDS) is retried.

A head (the first N bytes: a slice of a big file) is asked for as "Range: bytes=0-(N-1)" and
complete when it has N bytes (or the whole file, if that is shorter); the file's sha256 cannot
check a part of it, so only the size is checked. cut_after then trims it to end just after the
last occurrence of a marker (a record separator), so no record is cut in half.
"""
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dataloader import DataError, file_sha256
from fileio import printable, publish, quoted

SOURCE_HINT = ("Offline? Put the files in a folder and pass --source FOLDER "
               "(or set STORYLLAMA_SOURCE), or point --source at a mirror URL.")
MAX_BYTES = 8 << 30  # per file: the largest TinyStories file is 2.2 GB, an endless body stops here
DEADLINE = 6 * 3600  # seconds per file: 2.2 GB at 100 KB/s; a trickle cannot hold a download longer
STALL_SECONDS, STALL_BYTES = 60, 16 << 10  # an attempt that moves less than this is dropped and resumed


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, but keeps each hop's headers: Hugging Face puts the
    file's sha256 (X-Linked-ETag) on the redirect, not on the final CDN response."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _server_sha256(all_headers):
    for headers in all_headers:
        for key in ("X-Linked-ETag", "ETag"):
            value = (headers.get(key) or "").strip()
            value = value[2:] if value.startswith("W/") else value
            value = value.strip('"').lower()
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    return None


def http_download(url, dest, retries=3, timeout=60, sha256=None, max_bytes=MAX_BYTES, deadline=DEADLINE,
                  head=None, cut_after=None):
    """
    Download url to dest through dest.part, resuming a partial .part with an HTTP Range request,
    retrying an interrupted or stalled transfer up to `retries` times. The file is complete when its
    size is the total from Content-Length/Content-Range (or, with no length given, when a chunked
    body ended with its last chunk) and its sha256 matches: the one given, else the one the server
    gives (as an ETag or X-Linked-ETag), if any; only then is it renamed to dest. More than max_bytes
    is refused (the .part deleted); past `deadline` seconds (all attempts) the .part is kept for a
    later run to resume.
    head=N: only the first N bytes are wanted (Range: bytes=have-(N-1)); a 206 for any other span
    is refused, a server that ignores the Range (200, the whole file) is read only up to N bytes,
    and the sha256 is checked only if the whole file fits in N. cut_after (with head): see _cut_after.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    total, sha = _fill_part(url, part, retries, timeout, sha256, max_bytes, time.monotonic() + deadline, head)
    sha, said = (sha256, "expected") if sha256 else (sha, "the server said")
    got = part.stat().st_size
    whole_file = head is None or (total is not None and total <= head)  # else a head: no hash can check it
    if total is not None and got != (total if whole_file else head):
        part.unlink()
        raise DataError(f"download of {printable(url, 300)} is corrupt: {got} bytes, the server said {total}; "
                        "deleted it, run again")
    if sha is not None and whole_file:
        actual = file_sha256(part)
        if actual != sha:
            part.unlink()
            raise DataError(f"download of {printable(url, 300)} is corrupt: sha256 {actual}, {said} {sha}; "
                            "deleted it, run again")
    if cut_after and head is not None:
        _cut_after(part, cut_after, url)
    publish(part, dest)
    return dest


def _fill_part(url, part, retries, timeout, sha256, max_bytes, t_end, head):
    """Append url's bytes (its first `head` of them) to part, one request per attempt, until part holds
    all of them: (the total size the server gave or None, the sha256 it gave or None)."""
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if head is not None and have >= head:  # a run stopped between the last byte and the rename
            if have > head:
                part.unlink()
                continue
            return None, None
        request = urllib.request.Request(url, headers={"User-Agent": "storyllama"})
        if have or head is not None:
            request.add_header("Range", f"bytes={have}-{'' if head is None else head - 1}")
        redirects = _RecordRedirects()
        try:
            resp = urllib.request.build_opener(redirects).open(request, timeout=min(timeout, _left(t_end, url, part)))
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: .part may be complete, or too long
                total = _range_total(e.headers.get("Content-Range"))
                e.close()
                if total == have:
                    return total, _server_sha256(redirects.headers + [e.headers])
                part.unlink()
                continue
            raise DataError(f"download of {printable(url, 300)} failed: HTTP {e.code} {printable(e.reason)}. "
                            f"{SOURCE_HINT}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"could not download {printable(url, 300)}: {printable(reason, 300)}. "
                            f"{SOURCE_HINT}") from None
        with resp:
            sha = _server_sha256(redirects.headers + [resp.headers])
            total = _response_total(resp, url, have, head)
            have = have if resp.status == 206 else 0  # 200: the whole file (no Range support restarts from zero)
            want = total if head is None or total is None else min(head, total)  # bytes to end with
            if want is not None and want > max_bytes:
                raise DataError(f"download of {printable(url, 300)}: the server says {want} bytes, more than the {max_bytes} "
                                "allowed for one file")
            whole = _receive(resp, part, have, want, max_bytes, t_end, url, part.name[:-5], stop=head)
        got = part.stat().st_size
        if head is not None and got == head:
            return total, sha  # all that was asked for (the connection is closed, the rest never read)
        if total is None and whole and (resp.chunked or sha or sha256):
            total = got  # no length given: the last chunk (or the hash, checked by the caller) proves it whole
        elif total is None and whole:
            part.unlink()
            raise DataError(f"download of {printable(url, 300)}: the server gave no Content-Length, no chunked framing and no "
                            f"sha256, so a cut-off transfer cannot be told from a whole one. {SOURCE_HINT}")
        if total is not None and got >= total:
            return total, sha
        failures += 1
        if failures > retries:
            raise DataError(f"download of {printable(url, 300)} stopped at {got} of {total if total is not None else 'unknown'} "
                            "bytes; run the same command again to resume it")
        time.sleep(min(0.5 * failures, 5, _left(t_end, url, part)))


def _response_total(resp, url, have, head):
    """The file's total size from a 206's Content-Range (checked to start at `have` and, for a head, to
    end where asked) or a 200's Content-Length; None when the server does not say."""
    if resp.status != 206:
        return _content_length(resp.headers.get("Content-Length"), url)
    content_range = resp.headers.get("Content-Range")
    start, end, total = _range_start(content_range), _range_end(content_range), _range_total(content_range)
    if start is None:
        raise DataError(f"download of {printable(url, 300)}: the server sent a malformed Content-Range "
                        f"{quoted(content_range)}")
    if start != have:
        raise DataError(f"download of {printable(url, 300)}: server resumed at byte {start}, asked for {have}")
    if head is not None and end != min(head, total or head) - 1:
        raise DataError(f"download of {printable(url, 300)}: asked for bytes {have}-{head - 1}, the server sent "
                        f"Content-Range {content_range!r}")
    return total


def _cut_after(path, marker, what):
    """Truncate path just after the last occurrence of marker (the end of the last whole record).
    Idempotent, and a prefix of the same file cut again gives the same bytes, so a .part that was
    cut but not yet renamed can be resumed. DataError (the file deleted) when there is none."""
    size, block = path.stat().st_size, 1 << 20
    with open(path, "rb") as f:
        end = size
        while end > 0:  # scan back in blocks that overlap by len(marker) - 1 bytes
            start = max(0, end - block)
            f.seek(start)
            i = f.read(end - start + len(marker) - 1).rfind(marker)
            if i >= 0:
                os.truncate(path, start + i + len(marker))
                return
            end = start
    path.unlink()
    raise DataError(f"{what}: the first {size} bytes hold no {marker.decode()!r}, so no complete record; "
                    "not a file of that format, or the slice is too small")


def _left(t_end, url, part):
    """Seconds left before the deadline, or DataError once it has passed (the .part stays)."""
    left = t_end - time.monotonic()
    if left <= 0:
        have = part.stat().st_size if part.exists() else 0
        raise DataError(f"download of {printable(url, 300)} did not finish in time ({have} bytes so far, kept in {part.name}); "
                        "run the same command again to resume it")
    return left


def _receive(resp, part, have, total, max_bytes, t_end, url, name, stop=None):
    """Append resp's body to part, up to `stop` bytes in all (then the rest is never read); True when
    it ended as its framing says (a cut-off chunked body raises inside http.client) or at stop,
    False when interrupted or stalled (the caller retries)."""
    with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                       unit_divisor=1024, desc=name, leave=False) as bar:
        window_start, window_bytes = time.monotonic(), 0
        try:
            # read1: whatever has arrived, so the deadline and the stall rule are checked between
            # reads even when a server sends a byte at a time (read(n) would wait for all n)
            while chunk := resp.read1(1 << 20 if stop is None else min(1 << 20, stop - have)):
                f.write(chunk)
                bar.update(len(chunk))
                have += len(chunk)
                if have > max_bytes:
                    f.close()
                    part.unlink()
                    raise DataError(f"download of {printable(url, 300)}: more than the {max_bytes} bytes allowed for one file; "
                                    "deleted it")
                _left(t_end, url, part)
                window_bytes += len(chunk)
                if time.monotonic() - window_start > STALL_SECONDS:
                    if window_bytes < STALL_BYTES:
                        return False  # a trickle: drop this connection, resume on a new one
                    window_start, window_bytes = time.monotonic(), 0
        except (OSError, http.client.HTTPException):
            return False  # an interrupted transfer: what we got stays in .part
    return True


def _content_length(value, url):
    """Content-Length as an int (None when absent); DataError for anything but digits."""
    if value is None:
        return None
    if not re.fullmatch(r"\s*\d+\s*", value):
        raise DataError(f"download of {printable(url, 300)}: the server sent a malformed Content-Length {quoted(value)}")
    return int(value)


def _range_total(content_range):
    # "bytes 100-199/1234" or "bytes */1234"
    m = re.search(r"/(\d+)\s*$", content_range or "")
    return int(m.group(1)) if m else None


def _range_start(content_range):
    m = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _range_end(content_range):
    m = re.match(r"\s*bytes\s+\d+-(\d+)\s*/", content_range or "")
    return int(m.group(1)) if m else None


def _copy_local(src, dest, sha256=None, head=None, cut_after=None):
    """Copy src (its first `head` bytes, if given) to dest through dest.part, as http_download does."""
    part = dest.with_name(dest.name + ".part")
    size = src.stat().st_size if head is None else min(head, src.stat().st_size)
    with open(src, "rb") as fi, open(part, "wb") as fo, tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, leave=False) as bar:
        while block := fi.read(min(1 << 20, size - fo.tell())):
            fo.write(block)
            bar.update(len(block))
    if part.stat().st_size != size:
        raise DataError(f"copy of {src} is incomplete ({part.stat().st_size} of {size} bytes)")
    if sha256 and size == src.stat().st_size and file_sha256(part) != sha256:
        part.unlink()
        raise DataError(f"{src}: sha256 {file_sha256(src)}, expected {sha256}: not the file {dest.name}")
    if cut_after and head is not None:
        _cut_after(part, cut_after, src)
    publish(part, dest)


def fetch(name, dest_dir, base_url, source=None, retries=3, sha256=None, head=None, cut_after=None, save_as=None):
    """Get dest_dir/name (or dest_dir/save_as) from base_url, or from source (default: $STORYLLAMA_SOURCE):
    a mirror URL, a local folder or a local file; with sha256 given, only a file of that hash is
    accepted. head=N: only the file's first N bytes, cut after the last cut_after (see http_download)."""
    dest = Path(dest_dir) / (save_as or name)
    source = source or os.environ.get("STORYLLAMA_SOURCE") or None
    if source is None or "://" in source:
        base = source or base_url
        url = base if base.endswith(name) else base.rstrip("/") + "/" + name
        print(f"downloading {printable(url, 300)}" + ("" if head is None else f" (its first {head:,} bytes)"))
        return http_download(url, dest, retries=retries, sha256=sha256, head=head, cut_after=cut_after)
    src = Path(source)
    if src.is_dir():
        src = src / name
    elif src.name != name:  # a single local file stands in for the file of the same name only
        raise DataError(f"--source {source}: need a file named {name} (or a folder holding it)")
    if not src.is_file():
        raise DataError(f"--source: {src} not found (the folder must hold {name})")
    print(f"copying {src}" + ("" if head is None else f" (its first {head:,} bytes)"))
    _copy_local(src, dest, sha256, head, cut_after)
    return dest


