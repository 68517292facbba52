"""fileio.py: the two rules every file this project writes or reads follows, in one place.

Writing: a file appears whole or not at all. It is written to a temp file beside it (the same folder,
so the rename cannot cross file systems), flushed to disk and then renamed over the old one: a crash
or a full disk at any point leaves the old file (or none) and never a torn one next to a model.
Reading: a path is checked to be a regular file before it is opened, so that a FIFO or a device
cannot block or never end a read and a directory is refused, in one line naming the path.
Bounds: every size, count, id and context a reader takes from a file is below MAX_FIELD (model.check_args
applies it to a model's shape; every tokenizer reader to its ids and counts; gguf_meta to metadata).
Quoting: text from a file or a server is passed through printable before it reaches the terminal.

Imports nothing of this project: every other file may use it.
"""
import errno
import os
import stat

MAX_FIELD = 1 << 24  # every shape field, count and id read from a file is below this (docs/formats.md, "Bounds")
QUOTE_CHARS = 100  # characters of untrusted text a message quotes at most


def temp_path(path):
    """The temp file atomic_write writes path through: beside it, named by this process (two writers
    of the same file never share one)."""
    return f"{os.fspath(path)}.tmp{os.getpid()}"


def publish(tmp, path):
    """Put the finished file tmp in place as path: its bytes reach the disk before the rename, so the
    name never points at a file the disk does not yet hold."""
    with open(tmp, "r+b") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path, data):
    """Write path whole or not at all: data is bytes, or a function that writes to the open binary file.
    The temp file is removed when anything fails (and the error raised). Returns path."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def regular_file(path, what=None):
    """The size of path when it is a regular file (a link to one counts), else ValueError in one line.
    what names the file in the message ("the config.json is not a regular file") where the path alone
    does not say what it was meant to be."""
    try:
        st = os.stat(path)
    except OSError as e:
        if what:
            raise ValueError(f"{path}: cannot read the {what} ({e.strerror})") from None
        raise ValueError(f"{path}: {'no such file' if e.errno == errno.ENOENT else e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: the {what} is not a regular file" if what else f"{path}: not a regular file")
    return st.st_size


def printable(s, limit=QUOTE_CHARS):
    """Untrusted text (from a file, a server, a name inside a file) made safe to print in a message:
    C0 controls, DEL and C1 controls (ESC, CR, NUL and newline among them) become \\xHH escapes, so no file
    can move the cursor, clear the screen or forge a second line; other Unicode is kept. Cut to limit
    characters with "..." (a key as long as the file stays a short line); bytes are read as UTF-8."""
    if isinstance(s, (bytes, bytearray)):
        s = bytes(s[:4 * limit + 4]).decode("utf-8", "replace")
    s = str(s)
    cut = len(s) > limit
    s = s[:limit]
    if not s.isprintable():
        s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                    for c in s)
    return s + "..." if cut else s


def quoted(v, limit=QUOTE_CHARS):
    """v's repr made printable and cut (a string from a file, quoted in a message)."""
    return printable(repr(v), limit)
