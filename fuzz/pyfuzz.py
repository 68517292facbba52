"""
fuzz/pyfuzz.py: a fuzzer for the Python readers (GGUF, Hugging Face directories, tokenizer files,
checkpoints, run.c model files), beside fuzz/fuzz.c, which fuzzes run.c.

    python fuzz/pyfuzz.py --seconds 60                 # every format, 60 s in all (CI's smoke)
    python fuzz/pyfuzz.py --runs 100000 --format gguf  # a campaign: this many inputs of one format

Each format starts from seed files made by the project's own writers (a tiny model and its vocabulary)
and mutates them the way its structure invites: JSON values replaced by extreme numbers, long strings,
deep nests, huge lists and wrong types (config.json, tokenizer.json, a weight index, which may also be
removed, and a safetensors file's JSON header); a GGUF's size, count and type fields set to edge values,
metadata entries added in front (long keys, huge or lying arrays, control characters); binary files by
bit flips, edge values, cuts and splices; checkpoints by edits of their dicts before torch.save. The reader of each
format then runs on the mutated input in a worker process, where these are findings:
    - an exception that is not ValueError or OSError (the CLIs print those in one line; anything else
      is a traceback for the user);
    - more than --timeout CPU seconds for one input (every reader is linear in the bytes it reads), or
      ten times that on the clock (a read that blocks); CPU time, so that a machine shared with other
      jobs does not turn a starved worker into a finding;
    - an allocation past --memory_mb above the worker's start (a resource limit turns it into an error).
Findings are saved as fuzz/findings/py/<format>-<n>/ (the input's files, and why.txt). Exit 1 if any.
Inputs are a pure function of (--seed, format, n): a finding is reproduced with --only n.
"""
import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import binfile  # noqa: E402
import checkpoint  # noqa: E402
import gguf_file  # noqa: E402
import hf  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

SAMPLE = "Once upon a time, a little girl named Lily saw a big dog. \"Hi!\" she said. 42 café 😀"
# inputs are written to memory where there is a tmpfs: a disk's file and directory operations cost more
# than most readers' work (ten times the execs/s on the machine of docs/testing.md's numbers)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
INTERESTING = [0, 1, -1, 2, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1,
               2**64 - 1, 10**9, 10**18, 1e-300, 1e39, 1e308, -1e308, 0.5, float("inf")]


class Timeout(BaseException):
    """Raised by the per-input alarm: not an Exception, so no reader can swallow it."""


# -----------------------------------------------------------------------------
# seeds: a tiny model and its vocabulary, written by our own writers

def make_seeds(folder, vocab_model):
    """Write every format's seed files into folder; returns {format: path}."""
    torch.manual_seed(0)
    tok = Tokenizer(vocab_model)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words, hidden_dim=64,
                     max_seq_len=32)
    model = Transformer(args).eval()
    gguf_file.gguf_export(model, folder / "m.gguf", "q8_0", tok.vocab)
    hf.hf_export(model, folder / "hf", tok.vocab)
    # and its weight index (one shard): a sharded model's file, which the mutations also remove (mutate_index)
    raw = (folder / "hf" / "model.safetensors").read_bytes()
    names = [k for k in json.loads(raw[8:8 + struct.unpack_from("<Q", raw)[0]]) if k != "__metadata__"]
    (folder / "hf" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": len(raw)}, "weight_map": {k: "model.safetensors" for k in names}}))
    binfile.model_export(model, folder / "m.bin", version=3, dtype="q8_0", group_size=8, vocab_id=tok.identity)
    tok.export(folder / "tok.bin")
    torch.save({"model": model.state_dict(), "model_args": asdict(args), "iter_num": 3,
                "config": {"vocab_source": "custom", "vocab_size": tok.n_words, "max_seq_len": 32},
                "tokenizer": "tok.bin"}, folder / "ckpt.pt")
    shutil.copy(vocab_model, folder / "tok.model")
    return {"gguf": folder / "m.gguf", "hf": folder / "hf", "bin": folder / "m.bin", "tok_bin": folder / "tok.bin",
            "ckpt": folder / "ckpt.pt", "sp_model": folder / "tok.model"}


# -----------------------------------------------------------------------------
# mutations

def mutate_bytes(rng, data):
    """A few structure-blind edits of a binary file, biased to the little-endian size/count fields."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        op = rng.randrange(6)
        at = rng.randrange(max(len(b), 1))
        if op == 0 and b:  # bit flip
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an edge value in a 4- or 8-byte field, at an aligned offset near the start
            width = rng.choice([4, 8])
            at = rng.randrange(0, min(len(b), 4096)) & ~3
            v = rng.choice(INTERESTING)
            v = int(v) if isinstance(v, int) else 0x7F800000
            b[at:at + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 2:  # cut
            del b[at:]
        elif op == 3:  # splice a chunk of the file elsewhere
            n = rng.randrange(1, 64)
            b[at:at] = b[rng.randrange(max(len(b), 1)):][:n]
        elif op == 4 and b:  # a run of one byte
            b[at:at + rng.randrange(1, 32)] = bytes([rng.choice([0, 0xFF, 0x7F, 0x80, 0x1B])]) * rng.randrange(1, 32)
        else:  # bytes appended
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return bytes(b)


def wild_value(rng):
    """A JSON value a writer never produces."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(INTERESTING)
    if kind == 1:
        return "x" * rng.choice([0, 1, 1000, 100_000]) + rng.choice(["", "\x1b[2J", "\0", "\n", "<0xZZ>", "<0x41>"])
    if kind == 2:
        nest = 0
        for _ in range(rng.choice([10, 1000, 5000])):
            nest = [nest]
        return nest
    if kind == 3:
        return [rng.choice(["a", 1, None, "<unk>"])] * rng.choice([0, 10, 100_000])
    if kind == 4:
        return {"type": rng.choice(["BPE", "WordPiece", "Sequence", "ByteLevel", None]), "x": 1}
    return rng.choice([None, True, False, {}, [], "", -0.0])


def json_paths(obj, prefix=()):
    """Every (container, key) in a parsed JSON document."""
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))[:2000]  # big vocab lists: a sample of their entries is enough
    else:
        return []
    out = []
    for k, v in items:
        out.append((obj, k))
        out.extend(json_paths(v))
    return out


def mutate_json(rng, data):
    """Parsed, a few values replaced (or keys dropped or added), written back; else bytes edits."""
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate_bytes(rng, data)
    if rng.random() < 0.15:
        return mutate_bytes(rng, data)
    paths = json_paths(obj)
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not paths:
            break
        container, key = rng.choice(paths)
        if isinstance(container, dict) and rng.random() < 0.2:
            container.pop(key, None)
        elif isinstance(container, dict) and rng.random() < 0.1:
            container["k" * rng.choice([1, 10_000])] = wild_value(rng)
        else:
            container[key] = wild_value(rng)
    try:
        return json.dumps(obj).encode()
    except (ValueError, RecursionError):
        return data


def gguf_fields(data):
    """[(offset, width, what)] of a GGUF's header fields that size or type what follows: the counts, every
    key's and string's length, value and element types, array counts, and each tensor info's n_dims, ne,
    type and offset. A walk of the writer's own (well-formed) seed; stops quietly where it cannot go on."""
    out, pos = [(8, 8, "n_tensors"), (16, 8, "n_kv")], 24
    u32 = lambda at: struct.unpack_from("<I", data, at)[0]  # noqa: E731
    u64 = lambda at: struct.unpack_from("<Q", data, at)[0]  # noqa: E731
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    try:
        n_tensors, n_kv = u64(8), u64(16)
        for _ in range(n_kv):
            out.append((pos, 8, "key length"))
            pos += 8 + u64(pos)
            out.append((pos, 4, "value type"))
            vtype, pos = u32(pos), pos + 4
            if vtype == 8:
                out.append((pos, 8, "string length"))
                pos += 8 + u64(pos)
            elif vtype == 9:
                out += [(pos, 4, "element type"), (pos + 4, 8, "array count")]
                elem, n, pos = u32(pos), u64(pos + 4), pos + 12
                for i in range(n):
                    if elem != 8:
                        pos += n * sizes[elem]
                        break
                    if i < 64:  # the first strings' lengths: enough to aim at
                        out.append((pos, 8, "string length"))
                    pos += 8 + u64(pos)
            else:
                pos += sizes[vtype]
        for _ in range(n_tensors):
            out.append((pos, 8, "name length"))
            pos += 8 + u64(pos)
            n_dims = u32(pos)
            out += [(pos, 4, "n_dims")] + [(pos + 4 + 8 * d, 8, "ne") for d in range(n_dims)]
            pos += 4 + 8 * n_dims
            out += [(pos, 4, "tensor type"), (pos + 4, 8, "tensor offset")]
            pos += 12
    except (struct.error, KeyError):
        pass
    return out


def new_kv(rng):
    """A metadata entry a writer never makes: a long key, a huge or deep array, a key with control
    characters, a type out of range."""
    key = rng.choice([b"x", b"tokenizer.ggml.tokens", b"general.alignment", b"llama.context_length", b"\x1b[2J\n",
                      b"k" * rng.choice([1000, 100_000])])
    kind = rng.randrange(5)
    if kind == 0:  # strings, counted right or claiming more
        n = rng.choice([0, 1, 1000, 20_000])
        body = struct.pack("<IIQ", 9, 8, n + rng.choice([0, 0, 1, 1 << 24, 1 << 40])) + struct.pack("<Q", 1) * n
    elif kind == 1:  # a fixed-size array, its count at an edge
        body = struct.pack("<IIQ", 9, rng.choice([0, 4, 6, 10, 13, 9]),
                           rng.choice([0, 1, (1 << 24) - 1, 1 << 24, 2**63]))
    elif kind == 2:  # a scalar of each type
        vtype = rng.choice([0, 4, 5, 6, 7, 10, 12, 13, 2**32 - 1])
        body = struct.pack("<I", vtype) + struct.pack("<Q", rng.choice(INTERESTING[:16]) % 2**64)
    elif kind == 3:  # a string value with control characters
        v = rng.choice([b"\x1b[2J", b"\0", b"\xff\xfe", b"a" * 70_000])
        body = struct.pack("<IQ", 8, len(v)) + v
    else:
        body = struct.pack("<I", 8) + struct.pack("<Q", rng.choice([2**63, 2**64 - 1, 1 << 31]))
    return struct.pack("<Q", len(key)) + key + body


def mutate_gguf(rng, data):
    """Structure-aware GGUF edits: a size, count or type field set to an edge value, a metadata entry
    added in front (n_kv counted up), a tensor or key name given control characters; else bytes edits."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    b = bytearray(data)
    fields = gguf_fields(data)
    for _ in range(rng.choice([1, 1, 2])):
        op = rng.randrange(3)
        if op == 0 and fields:
            at, width, _ = rng.choice(fields)
            v = int(rng.choice([x for x in INTERESTING if isinstance(x, int)] + [3, 4, 5, 9, 12, 13, 2**24 - 1]))
            b[at:at + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 1:
            entry = new_kv(rng)
            n_kv = struct.unpack_from("<Q", b, 16)[0]
            b[16:24] = struct.pack("<Q", (n_kv + 1) % 2**64)
            b[24:24] = entry
            fields = []  # offsets moved
        else:
            names = [(at, w) for at, w, what in fields if what in ("key length", "name length")]
            if names:
                at, _ = rng.choice(names)
                n = struct.unpack_from("<Q", b, at)[0]
                if n:
                    b[at + 8] = rng.choice([0x1B, 0x0A, 0x0D, 0x00, 0x7F, 0x9B])
    return bytes(b)


def mutate_safetensors(rng, data):
    """A safetensors file's JSON header edited as JSON (dtypes, shapes, offsets, names) and its length
    written again; else bytes edits."""
    if rng.random() < 0.25 or len(data) < 8:
        return mutate_bytes(rng, data)
    n = struct.unpack_from("<Q", data)[0]
    head = mutate_json(rng, data[8:8 + n])
    if rng.random() < 0.1:
        return struct.pack("<Q", rng.choice([0, 2, n + 1, 2**63])) + head + data[8 + n:]
    return struct.pack("<Q", len(head)) + head + data[8 + n:]


def mutate_index(rng, data):
    """A weight index edited as JSON, or removed (None: the single-file path is fuzzed too)."""
    return None if rng.random() < 0.3 else mutate_json(rng, data)


def mutate_checkpoint(rng, data):
    """The checkpoint's dict edited (model_args, config, tensors) and saved again; else bytes edits."""
    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    ckpt = torch.load(io.BytesIO(data), weights_only=True)
    part = rng.choice(["model_args", "config", "model", "top"])
    if part == "model":
        name = rng.choice(sorted(ckpt["model"]))
        ckpt["model"][name] = rng.choice([torch.zeros(3), torch.zeros(0), torch.ones(2, 2, 2), "x", None])
    elif part == "top":
        ckpt[rng.choice(["model", "model_args", "config", "tokenizer", "iter_num"])] = wild_value(rng)
    else:
        d = ckpt[part] if isinstance(ckpt.get(part), dict) else {}
        key = rng.choice(sorted(d) + ["rope_theta", "norm_eps", "extra"]) if d else "dim"
        d[key] = wild_value(rng) if rng.random() < 0.5 else rng.choice(INTERESTING)
    f = io.BytesIO()
    try:
        torch.save(ckpt, f)
    except Exception:  # a value torch cannot save: a bytes edit instead
        return mutate_bytes(rng, data)
    return f.getvalue()


# -----------------------------------------------------------------------------
# formats: which files change, how, and the readers that must cope

def read_any_tokenizer(path):
    tok = Tokenizer(path)
    tok.decode(tok.encode(SAMPLE, bos=True, eos=True))
    tok.decode(list(range(min(tok.n_words, 600))))


def read_hf(folder):
    hf.hf_import(folder)
    read_any_tokenizer(folder)


FORMATS = {  # name: (seed key, the files of it to mutate and how, readers)
    "gguf": ("gguf", {"": mutate_gguf}, [gguf_file.gguf_import, read_any_tokenizer]),
    "hf": ("hf", {"config.json": mutate_json, "tokenizer.json": mutate_json, "tokenizer_config.json": mutate_json,
                  "model.safetensors": mutate_safetensors, "model.safetensors.index.json": mutate_index}, [read_hf]),
    "tokenizer_json": ("hf", {"tokenizer.json": mutate_json}, [read_any_tokenizer]),
    "bin": ("bin", {"": mutate_bytes}, [binfile.load_bin]),
    "tok_bin": ("tok_bin", {"": mutate_bytes}, [read_any_tokenizer]),
    "sp_model": ("sp_model", {"": mutate_bytes}, [read_any_tokenizer]),
    "ckpt": ("ckpt", {"": mutate_checkpoint}, [checkpoint.load_checkpoint]),
}


def make_input(fmt, seeds, seed, n, work):
    """Write input n of a format under work/ (the seed's files, the chosen ones mutated); returns its path.
    A folder's files are rewritten in place, every one of them (mutated or the seed's), never the folder
    removed and copied again: directory operations are most of an input's cost on a slow disk."""
    rng = random.Random(f"{seed}/{fmt}/{n}")
    key, files, _ = FORMATS[fmt]
    src = seeds[key]
    dst = work / src.name
    work.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        if not dst.is_dir():
            shutil.copytree(src, dst)
        names = [rng.choice(sorted(files))] if len(files) > 1 and rng.random() < 0.8 else sorted(files)
        for name in sorted(files):
            data = (src / name).read_bytes()
            data = files[name](rng, data) if name in names else data
            if data is None:  # the mutation removes the file
                (dst / name).unlink(missing_ok=True)
            else:
                (dst / name).write_bytes(data)
    else:
        dst.write_bytes(files[""](rng, src.read_bytes()))
    return dst


def read_all(readers, path):
    """Run each reader on path; a ValueError or OSError is a refusal in one line, what hostile input
    should get. Anything else propagates (a finding)."""
    for read in readers:
        try:
            read(path)
        except (ValueError, OSError):
            pass


# -----------------------------------------------------------------------------
# the worker: inputs one after another under a time and memory limit

def limit_memory(memory_mb):
    """Let this process allocate at most memory_mb more (an allocation past it is a MemoryError);
    returns the limits before, for setrlimit to restore."""
    old = soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm + (memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    return old


def alarm(signum, frame):
    raise Timeout()


def timers(seconds):
    """Timeout after seconds of CPU time, or ten times that on the clock (0: both off)."""
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, 10 * seconds)


def guarded(readers, path, timeout, memory_mb):
    """Why the readers are a finding on path (None when they refuse it cleanly or read it)."""
    timers(timeout)
    try:
        read_all(readers, path)
    except Timeout:
        return f"over {timeout} CPU s (or {10 * timeout} s on the clock)"
    except MemoryError:
        return f"MemoryError (past {memory_mb} MB)"
    except BaseException as e:
        return f"{type(e).__name__}: {str(e)[:300]}\n" + traceback.format_exc()[-3000:]
    finally:
        timers(0)
    return None


def worker(fmt, seeds, seed, first, last, timeout, memory_mb, work, report):
    """Run inputs first..last-1 (forked child). Writes "n\\n" before each input to report, and on a
    finding "!n why" and exits 3. A crash or a kill shows as the last "n" without its end."""
    limit_memory(memory_mb)
    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGPROF, alarm)
    warnings.simplefilter("ignore")  # numpy's overflow notes on garbage weights: not findings, and not news
    readers = FORMATS[fmt][2]
    for n in range(first, last):
        path = make_input(fmt, seeds, seed, n, work)
        os.write(report, f"{n}\n".encode())
        why = guarded(readers, path, timeout, memory_mb)
        if why:
            os.write(report, f"!{n} {why}\n".encode())
            os._exit(3)
    os._exit(0)


def run_worker(fmt, seeds, args, first, last, work):
    """Fork a worker for inputs first..last-1; returns (the next input to run, the finding or None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        worker(fmt, seeds, args.seed, first, last, args.timeout, args.memory_mb, work, w)
    os.close(w)
    lines = []
    with os.fdopen(r, "rb") as f:
        for line in f:
            lines.append(line.decode(errors="replace"))
    _, status = os.waitpid(pid, 0)
    started = [int(x) for x in lines if x[:1].isdigit()]
    bad = [x for x in lines if x.startswith("!")]
    if not bad and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return last, None
    at = int(bad[0][1:].split()[0]) if bad else started[-1] if started else first
    why = bad[0].split(" ", 1)[1] if bad else f"the worker died (status {status}): a crash or the memory limit"
    traceback_lines = lines[lines.index(bad[0]) + 1:] if bad else []
    return at + 1, (at, why + "".join(traceback_lines))


def campaign(fmt, seeds, args, out):
    """Run args.runs inputs of one format (or until args.seconds pass) in forked workers, 500 to a worker;
    returns (inputs run, findings)."""
    deadline = time.time() + args.seconds if args.seconds else float("inf")
    work = Path(tempfile.mkdtemp(prefix=f"pyfuzz-{fmt}-", dir=SCRATCH))
    # the readers run once on the seed here, before the workers fork: a reader's first call pays for
    # torch's lazy imports and first-use setup (~3 s for a checkpoint), which is no finding of the input's
    # (under the workers' limits, the seed unmutated, whatever happens: what it does, the inputs will show)
    old = limit_memory(args.memory_mb), signal.signal(signal.SIGALRM, alarm), signal.signal(signal.SIGPROF, alarm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guarded(FORMATS[fmt][2], seeds[FORMATS[fmt][0]], max(args.timeout, 10), args.memory_mb)
    resource.setrlimit(resource.RLIMIT_AS, old[0])
    signal.signal(signal.SIGALRM, old[1])
    signal.signal(signal.SIGPROF, old[2])
    n, stop, findings = (args.only, args.only + 1, 0) if args.only is not None else (0, args.runs, 0)
    ran = 0
    while n < stop and time.time() < deadline:
        first, last = n, min(n + 500, stop)
        if args.seconds:  # about a second's worth near the deadline, so a run ends close to it
            last = min(last, n + 50)
        n, found = run_worker(fmt, seeds, args, first, last, work / "in")
        ran += n - first
        if found:
            at, why = found
            save = out / f"{fmt}-{at}"
            shutil.rmtree(save, ignore_errors=True)
            save.mkdir(parents=True)
            src = make_input(fmt, seeds, args.seed, at, work / "keep")
            (shutil.copytree if src.is_dir() else shutil.copy)(src, save / src.name)
            (save / "why.txt").write_text(why)
            findings += 1
            print(f"pyfuzz: {fmt} input {at}: {why.splitlines()[0]} (saved in {save})", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return ran, findings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--format", nargs="+", default=sorted(FORMATS), choices=sorted(FORMATS))
    p.add_argument("--seconds", type=float, default=0, help="time for all formats together (0: no limit)")
    p.add_argument("--runs", type=int, default=10**9, help="inputs per format")
    p.add_argument("--only", type=int, default=None, help="run input N alone (reproduce a finding)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3.0, help="CPU seconds one input may take")
    p.add_argument("--memory_mb", type=int, default=1024, help="memory one input may allocate")
    p.add_argument("--vocab", default=str(REPO.parent / "shared" / "data" / "models" / "tok512.model"),
                   help="the sentencepiece vocabulary of the seeds")
    p.add_argument("--out", default=str(REPO / "fuzz" / "findings" / "py"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    total = findings = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="pyfuzz-seeds-", dir=SCRATCH) as d:
        seeds = make_seeds(Path(d), args.vocab)
        share = args.seconds / len(args.format) if args.seconds else 0
        for fmt in args.format:
            t = time.time()
            args_fmt = argparse.Namespace(**{**vars(args), "seconds": share})
            runs, found = campaign(fmt, seeds, args_fmt, out)
            total, findings = total + runs, findings + found
            print(f"pyfuzz: {fmt}: {runs:,} inputs in {time.time() - t:.0f} s, {found} findings")
    print(f"pyfuzz: {total:,} inputs in {time.time() - t0:.0f} s, {findings} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
