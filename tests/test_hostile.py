"""Hostile inputs, one test per row of issue 22's table (an attacker's hand-made files and streams):
each is refused in one line naming the file or stream, with a non-zero exit, in seconds and bounded
memory; or, where the input is legitimate, handled correctly. The classes behind the rows: every
reader bounds sizes, counts and contexts by model.check_args; export reads back what it writes before
the rename; run.c survives its model file changing under it and a stdout that cannot be written."""
import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import export
import gguf_file as G
import gguf_meta as GM
import sample
import tokenizer as T
from binfile import model_export, read_header
from checkpoint import load_checkpoint
from conftest import REPO, SANITIZED
from hf import hf_export, hf_import, hf_sources
from model import ModelArgs, Transformer

SHAPE = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
SECONDS = 30 if SANITIZED else 10  # each refusal, with room for a busy machine (load 7 on 2 cores: 6 s seen)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared):
    """One tiny model in every format our readers take: .bin, HF directory, GGUF, checkpoint."""
    d = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    m = Transformer(ModelArgs(**SHAPE))
    tok = T.Tokenizer(shared / "models" / "tok512.model")
    model_export(m, d / "m.bin")
    hf_export(m, d / "hf")
    planned = G.plan(m, "fp32", tok.vocab)
    G.write(d / "m.gguf", planned)
    torch.save({"model": m.state_dict(), "model_args": dataclasses.asdict(m.args)}, d / "ckpt.pt")
    return SimpleNamespace(dir=d, model=m, planned=planned, tok=shared / "models" / "tok512.bin")


def one_line(msg, *words):
    msg = msg.strip()
    assert msg and "\n" not in msg and all(w in msg for w in words), (words, msg[:3000])
    return msg


def refusal(fn, *args):
    """The ValueError message of fn(*args), or None when it returns."""
    try:
        fn(*args)
    except ValueError as e:
        return str(e)
    return None


@contextlib.contextmanager
def bounded(extra=1 << 30, seconds=SECONDS):
    """Within: at most `extra` more bytes of address space for this process (a reader that allocates by
    what a file claims fails, MemoryError or RuntimeError, instead of filling the machine), and at most
    `seconds`."""
    vm = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) << 10
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, old[1]))
    t0 = time.perf_counter()
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)
    assert time.perf_counter() - t0 < seconds


def export_cli(*argv):
    """export.py's main in this process: (exit status, its error line)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            export.main([str(a) for a in argv])
        except SystemExit as e:
            return (1, e.code) if isinstance(e.code, str) else (e.code, "")
    return 0, ""


def hf_variant(tiny, name, config=None, files=None):
    """A copy of the HF directory with config.json's fields changed and files replaced (bytes, or None:
    removed)."""
    d = tiny.dir / name
    shutil.copytree(tiny.dir / "hf", d)
    c = json.loads((d / "config.json").read_text())
    c.update(config or {})
    (d / "config.json").write_text(json.dumps(c))
    for f, data in (files or {}).items():
        (d / f).unlink(missing_ok=True)
        if data is not None:
            (d / f).write_bytes(data)
    return d


def bin_variant(tiny, name, off, fmt, value):
    data = bytearray((tiny.dir / "m.bin").read_bytes())
    struct.pack_into(fmt, data, off, value)
    (tiny.dir / name).write_bytes(data)
    return tiny.dir / name


def checkpoint_variant(tiny, name, **model_args):
    ckpt = {"model": tiny.model.state_dict(), "model_args": {**dataclasses.asdict(tiny.model.args), **model_args}}
    torch.save(ckpt, tiny.dir / name)
    return tiny.dir / name


def gguf_variant(tiny, name, meta):
    """The GGUF with metadata values replaced: {key: (value type, value)}."""
    kvs = [kv for kv in tiny.planned[0] if kv[0] not in meta] + [(k, *v) for k, v in meta.items()]
    G.write(tiny.dir / name, (kvs, tiny.planned[1], []), verify=False)
    return tiny.dir / name


def run_c(run_bin, tiny, model, *args, **kw):
    return subprocess.run([str(run_bin), str(model), "-z", str(tiny.tok), *map(str, args)], capture_output=True,
                          timeout=60, **kw)


# -----------------------------------------------------------------------------
# rows 3, 4, 6, 13: every reader's sizes, contexts and floats bounded by the same rules


def test_row3_hf_context_bounded_as_in_every_reader(tiny, run_bin):
    """max_position_embeddings=16777215 in config.json made hf_import build gigabytes of RoPE tables
    (a traceback); a smaller one exported a .bin that our own reader refused. Now the HF reader, the
    .bin reader and run.c (-n 0: the whole context) accept the same contexts: a full-context KV cache up
    to 1 GiB (this model's: 128 bytes a position) always, a larger one refused in one line."""
    verdicts = {}
    for ctx in (1 << 23, (1 << 23) + 1, (1 << 24) - 1):
        d = hf_variant(tiny, f"hf_ctx{ctx}", config={"max_position_embeddings": ctx})
        b = bin_variant(tiny, f"ctx{ctx}.bin", 32, "<i", ctx)
        with bounded():
            hf_msg = refusal(hf_sources, d)
        bin_msg = refusal(read_header, b)
        assert (hf_msg is None) == (bin_msg is None), (ctx, hf_msg, bin_msg)
        verdicts[ctx] = hf_msg is None
        if hf_msg is None:
            assert run_c(run_bin, tiny, b, "-n", 8).returncode == 0
            continue
        one_line(hf_msg, f"{d}/config.json: max_position_embeddings={ctx}: its KV cache would take")
        one_line(bin_msg, f"{b}: header field max_seq_len={ctx}: its KV cache would take")
        r = run_c(run_bin, tiny, b, "-n", 0)
        assert r.returncode == 1
        one_line(r.stderr.decode(), f"max_seq_len={ctx}: a KV cache for {ctx} steps would take")
        with bounded():
            status, line = export_cli(tiny.dir / f"out{ctx}.bin", f"--hf={d}")
        assert status == 1 and not (tiny.dir / f"out{ctx}.bin").exists()
        one_line(line, "export.py: error:", "max_position_embeddings")
    assert verdicts == {1 << 23: True, (1 << 23) + 1: False, (1 << 24) - 1: False}


def test_row4_checkpoint_context_and_sizes_bounded(tiny, capsys):
    """A checkpoint whose model_args claim max_seq_len=10**9 made export.py and sample.py allocate 8 GB
    (a traceback): the .bin and GGUF readers' bounds were not applied to checkpoints. Now check_args
    applies them: out of range, or a KV cache out of proportion to the weights, in one line."""
    cases = {"ctx_1e9.pt": (dict(max_seq_len=10 ** 9), "max_seq_len=1000000000 out of range"),
             "ctx_2e24.pt": (dict(max_seq_len=(1 << 24) - 1), "max_seq_len=16777215: its KV cache would take"),
             "dim_float.pt": (dict(dim=32.0), "dim=32.0 out of range")}
    for name, (args, words) in cases.items():
        path = checkpoint_variant(tiny, name, **args)
        with bounded():
            one_line(refusal(load_checkpoint, path), str(path), words)
            status, line = export_cli(tiny.dir / "out.bin", f"--checkpoint={path}")
            assert status == 1 and not (tiny.dir / "out.bin").exists()
            one_line(line, "export.py: error:", words)
            with pytest.raises(SystemExit) as e:
                sample.load_model(str(path), "cpu")
            assert e.value.code == 1
            one_line(capsys.readouterr().err, "sample.py: error:", words)
    # model_args of a big model (within every bound) beside no weights: refused before the model is built
    big = tiny.dir / "no_weights.pt"
    torch.save({"model": {}, "model_args": {**dataclasses.asdict(tiny.model.args), "dim": 4096, "n_layers": 64,
                                            "n_heads": 32, "n_kv_heads": 32, "hidden_dim": 11008}}, big)
    with bounded():
        one_line(refusal(load_checkpoint, big), str(big), "weights do not match its model_args: n_layers=64 needs 578 "
                 "weights, the checkpoint holds 0")


def test_row6_f32_floats_survive_from_every_source(tiny, run_bin):
    """norm_eps 1e-300 or rope_theta 1e39 (valid doubles) in a GGUF, config.json or checkpoint exported
    a .bin whose f32 header held 0 or inf, which run.c and export.py then refused. Now every reader
    takes a value only if its f32 is in range, and what is accepted exports and runs."""
    sources = []  # (source flag, the name of the field in that file)
    for field, v in {"norm_eps": 1e-300, "rope_theta": 1e39}.items():
        hf_key = {"norm_eps": "rms_norm_eps", "rope_theta": "rope_theta"}[field]
        extra = {"rope_parameters": {"rope_type": "default", "rope_theta": v}} if field == "rope_theta" else {}
        sources.append((f"--hf={hf_variant(tiny, f'hf_{field}', config={hf_key: v, **extra})}", f"{hf_key}={v}"))
        key = {"norm_eps": "llama.attention.layer_norm_rms_epsilon", "rope_theta": "llama.rope.freq_base"}[field]
        sources.append((f"--gguf={gguf_variant(tiny, f'{field}.gguf', {key: (12, v)})}", f"{key}={v}"))  # an f64
        sources.append((f"--checkpoint={checkpoint_variant(tiny, f'{field}.pt', **{field: v})}", f"{field}={v}"))
    for i, (src, words) in enumerate(sources):
        out = tiny.dir / f"f32_{i}.bin"
        with bounded():
            status, line = export_cli(out, src)
        assert status == 1 and not out.exists(), (src, line)
        one_line(line, "export.py: error:", src.split("=", 1)[1], words, "out of range")
    # the edges an f32 holds: a subnormal epsilon and the largest theta; exported, read back, run
    good = hf_variant(tiny, "hf_edges", config={"rms_norm_eps": 1e-40, "rope_theta": 3e38,
                                                "rope_parameters": {"rope_type": "default", "rope_theta": 3e38}})
    assert export_cli(tiny.dir / "edges.bin", f"--hf={good}")[0] == 0
    h = read_header(tiny.dir / "edges.bin")
    assert (h["norm_eps"], h["rope_theta"]) == (1e-40, 3e38)
    assert run_c(run_bin, tiny, tiny.dir / "edges.bin", "-n", 8, "-t", 0).returncode == 0


def test_row13_config_json_is_small(tiny):
    """A 60 MB config.json (within the 64 MiB cap of tokenizer.json) took 1.7 GB and 22 s to parse. A
    config.json is capped at 1 MiB (real ones: a few KB), an index and a safetensors header by the
    model's tensor count; the worst JSON within the cap parses in a fraction of a second."""
    big = hf_variant(tiny, "hf_big_config")
    with open(big / "config.json", "r+b") as f:
        f.truncate(60 << 20)  # the size is refused before a byte is parsed
    with bounded(extra=256 << 20):
        one_line(refusal(hf_import, big), f"{big}/config.json: 62,914,560 bytes is too big for a config.json")
    # the costliest JSON per byte (empty objects) just under the cap: parsed, and refused for what it lacks
    worst = hf_variant(tiny, "hf_worst_config")
    pairs = (1 << 20) // 13 - 1
    (worst / "config.json").write_text("{" + ",".join(f'"k{i:06}":{{}}' for i in range(pairs)) + "}")
    assert (worst / "config.json").stat().st_size < 1 << 20
    with bounded(extra=256 << 20):
        one_line(refusal(hf_import, worst), "config.json lacks 'hidden_size'")
    # a safetensors header of more bytes than the model's tensors can take
    raw = (tiny.dir / "hf" / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = {"pad": "x" * (1 << 20)}
    hj = json.dumps(header).encode()
    d = hf_variant(tiny, "hf_big_header", files={"model.safetensors": struct.pack("<Q", len(hj)) + hj + raw[8 + n:]})
    with bounded(extra=256 << 20):
        one_line(refusal(hf_import, d), "model.safetensors: a header of", "too big for the model's tensors")


# -----------------------------------------------------------------------------
# rows 1, 2: GGUF metadata nobody reads is stepped over, not built; a count past the bounds is refused


def gguf_with_first_kv(tiny, name, kv_head, hole=0, tail=b""):
    """The tiny GGUF with one more metadata entry in front: kv_head (its key, type and array head), then
    hole bytes of zeros left unwritten (a sparse file: gigabytes that take no disk) and tail. kv_head
    plus hole plus tail is made a multiple of 32, so the tensor data stays where the offsets say."""
    data = (tiny.dir / "m.gguf").read_bytes()
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    assert (len(kv_head) + hole + len(tail)) % 32 == 0
    with open(tiny.dir / name, "wb") as f:
        f.write(data[:16] + struct.pack("<Q", n_kv + 1) + kv_head)
        f.seek(hole, os.SEEK_CUR)
        f.write(tail + data[24:])
    return tiny.dir / name


def string_array_kv(key, n):
    return struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", GM.ARRAY, GM.STRING, n)


def test_row1_long_key_over_a_string_array_is_linear(tiny):
    """A metadata key as long as the file holding an array of strings took O(key length x elements)
    in export.py --gguf and tokenizer.py -t (an error label was built for every element: 74-120 s for 8
    MB). Now a key nobody reads is stepped over, its strings' lengths walked, nothing built: the model
    and its vocabulary load as without it, in well under a second. Cut short, the file is refused in one
    line that quotes the key's first characters, escaped."""
    n = 400_000  # 9 bytes each: 3.6 MB, a multiple of 32, as is the entry's head with this key
    key = b"\x1b[2J" + b"k" * ((4 << 20) + 4)
    strings = b"".join(struct.pack("<Q", 1) + b"s" for _ in range(n))
    path = gguf_with_first_kv(tiny, "longkey.gguf", string_array_kv(key, n), tail=strings)
    with bounded(extra=256 << 20):
        status, line = export_cli(tiny.dir / "longkey.bin", f"--gguf={path}")
        tok = T.Tokenizer(path)
    assert status == 0, line
    assert export_cli(tiny.dir / "plain.bin", f"--gguf={tiny.dir / 'm.gguf'}")[0] == 0
    assert (tiny.dir / "longkey.bin").read_bytes() == (tiny.dir / "plain.bin").read_bytes()
    assert tok.vocab == T.Tokenizer(tiny.dir / "m.gguf").vocab
    cut = tiny.dir / "longkey_cut.gguf"
    cut.write_bytes(path.read_bytes()[:len(key) + 24 + 3_300_000])  # room for the count, not the strings
    for read in (G.gguf_import, T.Tokenizer):
        with bounded(extra=256 << 20):
            msg = one_line(refusal(read, cut), f"{cut}: truncated: \\x1b[2Jkkk", "runs past the end of the file")
        assert len(msg) < 300 and "\x1b" not in msg


def test_row2_sparse_gguf_with_a_huge_array(tiny):
    """A sparse GGUF (a few KB on disk, 2 GB apparent) with one big metadata array: every array was
    materialised whatever its key (4 GB peak; 250M empty strings still running after 90 s). Now an
    array under a key nobody reads is skipped by its length (the model loads, in bounded memory), and
    any array of MAX_FIELD elements or more is refused at once, in one line, whatever its key.""" 
    n = (1 << 24) - 1  # u64 x MAX_FIELD - 1: 128 MiB of zeros, under a key nobody reads
    head = struct.pack("<Q", 16) + b"x" * 16 + struct.pack("<IIQ", GM.ARRAY, 10, n)  # 40 + 8n: a multiple of 32
    path = gguf_with_first_kv(tiny, "sparse_u64.gguf", head, hole=8 * n)
    assert path.stat().st_blocks * 512 < 16 << 20
    with bounded(extra=(128 << 20) + (96 << 20)):  # the mmap of the file's 128 MiB, and 96 MB: no copy of it
        model = G.gguf_import(path)
    assert torch.equal(model.tok_embeddings.weight, tiny.model.tok_embeddings.weight)
    head = struct.pack("<Q", 1) + b"x" + struct.pack("<IIQ", GM.ARRAY, 0, (1 << 31) + 7)  # u8 x 2 GiB
    path = gguf_with_first_kv(tiny, "sparse_u8.gguf", head, hole=(1 << 31) + 7)
    with bounded(extra=(2 << 30) + (96 << 20)):
        one_line(refusal(G.gguf_import, path), f"{path}: x claims 2147483655 elements (at most 16777215)")
    n = 250_000_000
    for key in (b"x", b"tokenizer.ggml.tokens"):
        head = string_array_kv(key, n)
        hole = 8 * n + (-(len(head) + 8 * n) % 32)
        path = gguf_with_first_kv(tiny, "sparse_strings.gguf", head, hole=hole)
        for read in (G.gguf_import, T.Tokenizer):
            with bounded(extra=(2 << 30) + (512 << 20)):
                one_line(refusal(read, path), f"{path}: {key.decode()} claims {n} elements (at most 16777215)")
        status, line = export_cli(tiny.dir / "sparse.bin", f"--gguf={path}")
        assert status == 1
        one_line(line, "export.py: error:", "claims 250000000 elements")


def test_row7_sparse_token_id_is_refused(tmp_path, capsys):
    """A 179-byte tokenizer.json with one id 16777215: the lists were sized by the largest id (2.9 GB
    peak, a 168 MB tokenizer file written, rc 0). Ids must now count the tokens (at most half of the ids
    below the largest unused): refused in one line naming the file and the id, nothing written."""
    t = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 16777215}, "merges": []},
         "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": []}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(t))
    assert path.stat().st_size < 200
    with bounded(extra=256 << 20):
        assert T.main(["-t", str(path), "-o", str(tmp_path / "tok.bin")]) == 1
    one_line(capsys.readouterr().err, f"error: {path}: token id 16777215 in a vocabulary of 2 ids")
    assert not (tmp_path / "tok.bin").exists()
    # a few unused ids (as real vocabularies have) are fine: ids 0, 1, 3 of 4
    t["model"]["vocab"] = {"a": 0, "b": 1, "ab": 3}
    path.write_text(json.dumps(t))
    assert T.Tokenizer(path).vocab.pieces[:4] == [b"a", b"b", b"", b"ab"]


def byte_typed_gguf(tiny, shared):
    """A GGUF of tok512's vocabulary with one normal token (" the"-like: a leading space) typed byte;
    returns (path, its id, tok512)."""
    tok = T.Tokenizer(shared / "models" / "tok512.model")
    k = next(i for i, p in enumerate(tok.vocab.pieces) if p.startswith(b" ") and len(p) > 3)
    hacked = dataclasses.replace(tok.vocab, types=[GM.V.BYTE if i == k else t for i, t in enumerate(tok.vocab.types)])
    kvs, _ = GM.tokenizer_kvs(hacked)
    G.write(tiny.dir / "byte.gguf", (kvs, [], []), verify=False)
    return tiny.dir / "byte.gguf", k, tok


def test_row12_byte_token_not_spelled_0xHH_decodes_as_its_text(tiny, shared):
    """A GGUF vocabulary with a byte-typed token that is not <0xHH>: sample.py died with a traceback in
    decode (bytes([-1])). It is now its text, as run.c prints it (the next test runs both)."""
    path, k, tok = byte_typed_gguf(tiny, shared)
    v = T.Tokenizer(path)
    assert v.vocab.types[k] == GM.V.BYTE and v.decode([k, k]) == (tok.vocab.pieces[k] * 2).decode()[1:]


@pytest.mark.slow  # a sample.py process of its own
def test_row12_byte_token_not_spelled_0xHH_decodes_as_run_c(tiny, run_bin, shared):
    """run.c and sample.py print a byte-typed token that is not <0xHH> the same: a model that always
    picks that token (its residual stream constant, the output row of that token the only one not zero)
    generates through both, which must print the same story."""
    path, k, tok = byte_typed_gguf(tiny, shared)
    args = ModelArgs(**{**SHAPE, "tie_embeddings": False})
    m = Transformer(args)
    with torch.no_grad():
        for name, w in m.named_parameters():
            w.copy_(torch.ones_like(w) if name.startswith(("tok_embeddings", "norm", "layers.0.attention_norm",
                                                               "layers.0.ffn_norm")) else torch.zeros_like(w))
        m.output.weight[k] = 1.0
    model_export(m, tiny.dir / "byte.bin")
    T.Tokenizer(path).export(tiny.dir / "byte_tok.bin")
    r = run_c(run_bin, SimpleNamespace(tok=tiny.dir / "byte_tok.bin"), tiny.dir / "byte.bin", "-t", "0", "-n", "8")
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={tiny.dir / 'byte.bin'}",
                         f"--tokenizer={tiny.dir / 'byte.gguf'}", "--temperature=0", "--max_new_tokens=8",
                         "--device=cpu", "--end_token="], capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    text = r.stdout.decode().splitlines()[0]
    assert text == (tok.vocab.pieces[k] * 8).decode()[1:] and r2.stdout.splitlines()[0] == text, (r.stdout, r2.stdout)


def resume(tmp_path, name, **ckpt):
    """train.py --init_from=resume on a checkpoint of the tiny model holding ckpt's parts: (status, stderr)."""
    out = tmp_path / name
    out.mkdir()
    torch.save(ckpt, out / "ckpt.pt")
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--init_from=resume", f"--out_dir={out}",
                        "--device=cpu", "--max_iters=1", "--compile=False"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    return r.returncode, r.stderr, out / "ckpt.pt"


@pytest.mark.slow  # a train.py process (torch's import: 4-8 s on a busy machine)
def test_row5_resume_without_config_is_one_line(tiny, tmp_path):
    """train.py --init_from=resume on a checkpoint with model and model_args but no `config` was a
    traceback (KeyError). Now one line naming the file and what is missing."""
    status, err, path = resume(tmp_path, "no_config", model=tiny.model.state_dict(),
                               model_args=dataclasses.asdict(tiny.model.args))
    assert status == 1
    one_line(err, f"train.py: error: {path}: not a checkpoint train.py can resume: it holds no 'config'")


@pytest.mark.slow  # a train.py process for each
def test_row5_resume_with_a_malformed_checkpoint_is_one_line(tiny, tmp_path):
    """A malformed `config` (not a dict, a setting of the wrong type), a missing optimizer state or a
    malformed iteration was an AttributeError or a TypeError deep in the run: each is one line naming
    the file, before any data is looked at."""
    base = {"model": tiny.model.state_dict(), "model_args": dataclasses.asdict(tiny.model.args),
            "config": {"batch_size": 2}, "optimizer": {}, "iter_num": 1, "best_val_loss": 9.0}
    cases = [({"config": [1]}, "its 'config' is not a dict"),
             ({"config": {"batch_size": "x\x1b[2J"}}, "config batch_size='x\\x1b[2J' is not a int"),
             ({"optimizer": None}, "it holds no optimizer state"),
             ({"iter_num": "7"}, "its 'iter_num' is not an iteration number")]
    for i, (part, words) in enumerate(cases):
        status, err, path = resume(tmp_path, f"bad{i}", **{**base, **part})
        assert status == 1, err
        one_line(err, f"train.py: error: {path}:", words)


def safe_line(msg, *words):
    """One line holding words and no control character (C0, DEL, C1: ESC, CR, NUL, newline among them)."""
    one_line(msg, *words)
    assert not re.search("[\x00-\x1f\x7f-\x9f]", msg.strip()), msg


FORGED = "\x1b[2J\x1b[32mdownload complete\x1b[0m\rnote: fine\x00"  # clears the screen, forges a line
FORGED_SHOWN = "\\x1b[2J\\x1b[32mdownload complete"


def test_row8_untrusted_text_is_escaped_before_the_terminal(tiny):
    """An HTTP reason phrase, a GGUF architecture or tensor name and a checkpoint's weight name holding
    ESC/CR/NUL reached the terminal raw: a hostile mirror or model file could clear the screen and forge
    a green "download complete" or a second note line. Every message quoting them now escapes them
    (fileio.printable), and cuts them short."""
    import socketserver
    import threading
    import download

    class Hostile(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.wfile.write(f"HTTP/1.1 404 {FORGED}\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))

    with socketserver.TCPServer(("127.0.0.1", 0), Hostile) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/x.txt"
        with pytest.raises(download.DataError) as e:
            download.http_download(url, tiny.dir / "dl.txt", retries=1, timeout=10)
        srv.shutdown()
    safe_line(str(e.value), f"download of {url} failed: HTTP 404 {FORGED_SHOWN}")
    # a GGUF's architecture, and a tensor name
    path = gguf_variant(tiny, "arch.gguf", {"general.architecture": (GM.STRING, FORGED)})
    safe_line(refusal(G.gguf_import, path), f"{path}: architecture '{FORGED_SHOWN}")
    status, line = export_cli(tiny.dir / "o.bin", f"--gguf={path}")
    assert status == 1
    safe_line(line, FORGED_SHOWN)
    kvs, infos, _ = tiny.planned
    G.write(tiny.dir / "name.gguf", (kvs, [(FORGED if i == len(infos) - 1 else n, *rest) for i, (n, *rest) in enumerate(infos)], []),
            verify=False)
    safe_line(refusal(G.gguf_import, tiny.dir / "name.gguf"), f"tensor {FORGED_SHOWN}")
    # a checkpoint's weight name
    ckpt = {"model": {**tiny.model.state_dict(), FORGED: torch.zeros(1)},
            "model_args": dataclasses.asdict(tiny.model.args)}
    torch.save(ckpt, tiny.dir / "name.pt")
    safe_line(refusal(load_checkpoint, tiny.dir / "name.pt"), "weights do not match", FORGED_SHOWN)


# -----------------------------------------------------------------------------
# the smaller ones: overlapping tensors, a NUL in weight_map, a raw pickle


def test_overlapping_tensors_are_refused(tiny):
    """Tensors at overlapping offsets were accepted: two weights could share bytes. GGUF tensors must lie
    one after another in the order of their infos (llama.cpp's loader refuses anything else), and a
    safetensors file's tensors must tile its data (the safetensors library's rule)."""
    data = bytearray((tiny.dir / "m.gguf").read_bytes())
    _, tensors, buf = GM.read_gguf(tiny.dir / "m.gguf")
    q, k = tensors["blk.0.attn_q.weight"][2], tensors["blk.0.attn_k.weight"][2]
    buf.close()
    name = b"blk.0.attn_k.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)  # n_dims, ne, type, then the offset
    off_at = at + 4 + 8 * 2 + 4
    struct.pack_into("<Q", data, off_at, struct.unpack_from("<Q", data, off_at)[0] - (k - q))  # onto attn_q's bytes
    (tiny.dir / "overlap.gguf").write_bytes(data)
    one_line(refusal(G.gguf_import, tiny.dir / "overlap.gguf"), "overlap.gguf: tensor blk.0.attn_k.weight starts at",
             "one after another")
    raw = (tiny.dir / "hf" / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    header[b]["data_offsets"] = header[a]["data_offsets"]  # the same size: every entry alone is fine
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    d = hf_variant(tiny, "hf_overlap", files={"model.safetensors": struct.pack("<Q", len(hj)) + hj + raw[8 + n:]})
    one_line(refusal(hf_import, d), "model.safetensors: tensor", "they must lie one after another")


def test_nul_in_weight_map_names_the_index(tiny):
    """A file name with an embedded NUL in weight_map gave os.stat's 'embedded null byte', naming no file."""
    st = (tiny.dir / "hf" / "model.safetensors").read_bytes()
    index = {"weight_map": {"model.embed_tokens.weight": "a\0b.safetensors"}}
    d = hf_variant(tiny, "hf_nul", files={"model.safetensors": None, "shard.safetensors": st,
                                         "model.safetensors.index.json": json.dumps(index).encode()})
    one_line(refusal(hf_import, d), f"{d}/model.safetensors.index.json: weight_map names 'a\\x00b.safetensors'")


def test_raw_pickle_weights_are_one_line(tiny):
    """A raw pickle as pytorch_model.bin is refused, and torch's 2-line warning about its protocol is
    not printed before the one line."""
    d = hf_variant(tiny, "hf_pickle", files={"model.safetensors": None, "pytorch_model.bin": pickle.dumps({"a": 1})})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        one_line(refusal(hf_import, d), "pytorch_model.bin: not a readable state dict")
    assert not seen, [str(w.message) for w in seen]


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_checkpoint_is_one_line(tiny, capsys, protocol):
    """A raw pickle as ckpt.pt (not torch.save's zip) is refused by export.py and sample.py in one line,
    with no warning of torch's printed before it."""
    path = tiny.dir / f"raw{protocol}.pt"
    path.write_bytes(pickle.dumps({"model": {}, "model_args": {}}, protocol=protocol))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        one_line(refusal(load_checkpoint, path), f"{path}: not a readable train.py checkpoint")
        status, line = export_cli(tiny.dir / "raw.bin", f"--checkpoint={path}")
        assert status == 1
        one_line(line, f"export.py: error: {path}: not a readable train.py checkpoint")
        with pytest.raises(SystemExit):
            sample.load_model(str(path), "cpu")
        one_line(capsys.readouterr().err, f"sample.py: error: {path}")  # protocol 0 is no pickle to it: read as .bin
    assert not seen, [str(w.message) for w in seen]


def test_export_never_writes_what_its_readers_refuse(tiny):
    """export reads every file back before its rename: a model whose args were changed after it was
    built (norm_eps 1e-300: 0 as an f32) is not written at all, in any format, and no temp file stays."""
    m = Transformer(ModelArgs(**SHAPE))
    m.load_state_dict(tiny.model.state_dict())
    m.args.norm_eps = 1e-300
    d = tiny.dir / "refused"
    d.mkdir()
    one_line(refusal(model_export, m, d / "m.bin"), f"{d}/m.bin: not written", "norm_eps")
    vocab = T.Tokenizer(tiny.tok).vocab
    one_line(refusal(G.gguf_export, m, d / "m.gguf", "fp32", vocab), f"{d}/m.gguf: not written")
    one_line(refusal(hf_export, m, d / "hf"), f"{d}/hf: not written", "config.json: rms_norm_eps=1e-300 out of range")
    assert sorted(p.name for p in d.rglob("*")) == ["hf"], list(d.rglob("*"))


# -----------------------------------------------------------------------------
# run.c: rows 9, 10, 11, -t and encode's memcpy


def start_chat(run_bin, tiny, model):
    """./run in chat mode on model (mapped: -n below 64), stopped at its first prompt (nothing of the
    model read yet)."""
    p = subprocess.Popen([str(run_bin), str(model), "-z", str(tiny.tok), "-m", "chat", "-n", "32"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    want, got = b"Enter system prompt (optional): ", b""
    while not got.endswith(want):
        c = p.stdout.read(1)
        assert c, p.stderr.read()
        got += c
    return p


def test_row9_model_file_changed_under_run(tiny, run_bin):
    """The model file truncated while ./run has it mapped (`cp new.bin model.bin` over a served model)
    was a SIGBUS and no message. Now it is one line; and a file rewritten in place while it was read
    (the same size) is an error at the end, not exit 0."""
    # bf16: a format run.c maps for a short run in every build (the ones it packs, it copies)
    src, model = tiny.dir / "m_bf16.bin", tiny.dir / "served.bin"
    model_export(tiny.model, src, dtype="bf16")
    shutil.copy(src, model)
    p = start_chat(run_bin, tiny, model)
    os.truncate(model, 0)
    out, err = p.communicate(b"\nhi\n", timeout=60)
    assert p.returncode == 1, (p.returncode, err)
    one_line(err.decode(), f"run: error: {model}: the model file shrank while it was being read")
    shutil.copy(src, model)
    p = start_chat(run_bin, tiny, model)
    time.sleep(0.02)  # a modification time the clock can tell apart
    model.write_bytes(src.read_bytes())
    out, err = p.communicate(b"\n", timeout=60)  # an empty system prompt, then the end of input: a normal end
    assert p.returncode == 1 and out == b"User: \n", (p.returncode, out, err)
    one_line(err.decode(), f"run: error: {model}: the model file changed while it was being read")


@pytest.mark.parametrize("mode", ["generate", "tokenize", "chat"])
def test_row10_story_that_cannot_be_written_is_an_error(tiny, run_bin, mode):
    """./run m.bin > /dev/full, or with stdout closed, exited 0: `./run m.bin > story.txt && next` went
    on without the story. Now a failed write is one line naming stdout and exit status 1."""
    args = {"generate": ["-n", 8, "-i", "Once"], "tokenize": ["-m", "tokenize", "-i", "Once upon"],
            "chat": ["-m", "chat", "-y", "", "-i", "hi", "-n", 32]}[mode]
    cmd = [str(run_bin), str(tiny.dir / "m.bin"), "-z", str(tiny.tok), *map(str, args)]
    with open("/dev/full", "wb") as full:
        r = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 1
    one_line(r.stderr.decode(), "run: error: cannot write to stdout: No space left on device")
    r = subprocess.run(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    one_line(r.stderr.decode(), "run: error: cannot write to stdout: Bad file descriptor")


def test_row11_chat_line_longer_than_the_context_is_refused_while_read(tiny, run_bin):
    """A 20 MB line on chat's stdin took 730 MB and 9 s before 'does not fit the context'. A line longer
    than the tokens left times the longest token's bytes cannot fit: refused while it is read."""
    line = tiny.dir / "line.txt"
    line.write_bytes(b"\n" + b"y" * (20 << 20) + b"\n")  # an empty system prompt, then the line
    limit = 1 << 30 if SANITIZED else 256 << 20  # address space: ASan reserves much, but never commits it
    with open(line, "rb") as stdin:
        t0 = time.perf_counter()
        r = subprocess.run([str(run_bin), str(tiny.dir / "m.bin"), "-z", str(tiny.tok), "-m", "chat", "-n", "16"],
                           stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
                           preexec_fn=None if SANITIZED else lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert time.perf_counter() - t0 < SECONDS and r.returncode == 1
    one_line(r.stderr.decode(), "run: error: stdin: a line of more than", "cannot fit the 16 tokens left in the context")


def test_temperature_below_fp32_min_is_a_temperature(tiny, run_bin):
    """-t 1e-45 was refused by a message naming the wrong bound ('a temperature >= 0'): it is an fp32
    (subnormal), and as the smallest temperature it samples like -t 0, the most likely token each step.
    -t 1e39, beyond fp32, is refused naming the bound it broke."""
    greedy = run_c(run_bin, tiny, tiny.dir / "m.bin", "-n", 12, "-t", 0)
    tiny_t = run_c(run_bin, tiny, tiny.dir / "m.bin", "-n", 12, "-t", "1e-45", "-s", 7)
    assert greedy.returncode == tiny_t.returncode == 0 and tiny_t.stdout == greedy.stdout, tiny_t.stderr
    r = run_c(run_bin, tiny, tiny.dir / "m.bin", "-t", "1e39")
    assert r.returncode == 1
    one_line(r.stderr.decode(), "run: error: -t expects a temperature in [0, 3.4e38], got '1e39'")


@pytest.mark.slow  # a compile of its own (the sanitizer builds, also -O1, are in the slow tier too)
def test_run_c_has_nothing_for_gcc_O1_to_warn_about():
    """gcc -O1 (the sanitizer builds) warned that encode's memcpy size may be negative: it cannot be,
    and an assert says so to the compiler."""
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-O1", "-Wall", "-Wextra", "-c", "-o", os.devnull, str(REPO / "run.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


# -----------------------------------------------------------------------------
# what the Python fuzzer (fuzz/pyfuzz.py) found, each fixed


def test_sentencepiece_field_of_the_wrong_wire_type(tmp_path, shared):
    """pyfuzz sp_model input 89703: a .model with a varint where a piece (a message) belongs, which
    sentencepiece skips, made our protobuf reader raise TypeError (a traceback). Every field is now
    taken as the wire type it must have."""
    path = tmp_path / "tok.model"
    path.write_bytes((shared / "models" / "tok512.model").read_bytes() + b"\x08\x05")  # field 1 as a varint
    one_line(refusal(T.Tokenizer, path), f"{path}: not a sentencepiece model (a piece is not a message)")


def test_empty_weight_map_is_one_line(tiny):
    """pyfuzz hf input 887: an index whose weight_map is {} was an IndexError (a traceback)."""
    d = hf_variant(tiny, "hf_empty_index", files={"model.safetensors.index.json": b'{"weight_map": {}}'})
    one_line(refusal(hf_import, d), f"{d}/model.safetensors.index.json: weight_map is empty")


def test_checkpoint_with_many_layers_and_few_weights_is_quick(tiny):
    """pyfuzz ckpt input 920 (and 8 more): model_args with n_layers=65535 beside the tiny model's weights
    built 65535 layers on the meta device before any weight was compared (over a minute). The weight
    count comes first now: refused at once."""
    path = checkpoint_variant(tiny, "many_layers.pt", n_layers=65535)
    with bounded(seconds=3):
        one_line(refusal(load_checkpoint, path), f"{path}: weights do not match its model_args: n_layers=65535 "
                 "needs 589817 weights, the checkpoint holds 12")
