"""GGUF (gguf_file.py; export.py --to_gguf and --gguf), offline, with models made here: round trips through
our reader (weights, tokenizers, .bin files), llama.cpp itself loading what we write (logits at every
position, its tokenisation and its greedy text against PyTorch and run.c), GGUFs written by llama.cpp's
own Python package imported for run.c, and malformed files refused in one line."""
import contextlib
import io
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gguf_file as G
import gguf_meta as GM
import tokenizer as T
import vocab as V
from binfile import load_bin, model_export
from model import ModelArgs, Transformer
from prompts import SPECIAL, prompts

REPO = Path(__file__).resolve().parent.parent
STORIES = "TinyStoriesV2-GPT4-train.head-10k-lines.txt"
CONFIGS = {  # GQA with a tied classifier; MQA untied, rope_theta and norm_eps away from the defaults
    "gqa_tied": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, hidden_dim=96, max_seq_len=64),
    "mqa_untied": ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=512, hidden_dim=64, max_seq_len=48,
                            rope_theta=500000.0, norm_eps=1e-6, tie_embeddings=False),
}


def random_model(args, seed=0, vocab_size=None):
    torch.manual_seed(seed)
    if vocab_size:
        args = ModelArgs(**{**args.__dict__, "vocab_size": vocab_size})
    m = Transformer(args)
    with torch.no_grad():  # norms away from 1 and larger weights: a swapped or misplaced tensor must show
        for name, p in m.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.08 * torch.randn_like(p))
    return m.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


def cli(*args, cap=False, cwd=None):
    """export.py in a subprocess; with cap, in a 2 GB address space (a file that made it allocate what it
    claims would fail with MemoryError instead of its one line)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    return subprocess.run([sys.executable, str(REPO / "export.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit if cap else None, cwd=cwd)


def cli_here(*args):
    """export.py in this process (faster): its exit status and stderr; any exception but SystemExit fails."""
    import export
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            export.main([str(a) for a in args])
            code = 0
        except SystemExit as e:  # sys.exit(message), or a message printed and a status (2: the command line)
            code = e.code if isinstance(e.code, int) else 1 if e.code else 0
            if not isinstance(e.code, int):
                print(e.code, file=err)
    return subprocess.CompletedProcess([], code, "", err.getvalue())


def one_line_error(r, *words, status=1):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("export.py: error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def stories(shared):
    """The complete stories of the shared V2 head, in order."""
    text = (shared / "tinystories" / STORIES).read_text()
    return [s.strip() for s in text.split("<|endoftext|>")[:-1] if s.strip()]


@pytest.fixture(scope="module")
def tok512(shared):
    return T.Tokenizer(shared / "models" / "tok512.model")


@pytest.fixture(scope="module")
def bytelevel(twin):
    """The 656K twin's tokenizer (below): a byte-level BPE with <|start_story|>/<|end_story|>, trained by the
    tokenizers library and saved as a Hugging Face directory."""
    return T.Tokenizer(twin[0])


# ------------------------------------------------------------------------------------------------
# round trips through our own reader


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", ["fp32", "f16", "q8_0"])
def test_export_import_roundtrip(tok512, tmp_path, cfg, dtype):
    m = random_model(CONFIGS[cfg])
    path = tmp_path / "m.gguf"
    assert G.gguf_export(m, path, dtype, tok512.vocab) == [
        "llama.cpp encodes some text differently: it keeps runs of spaces that this tokenizer collapses"]
    back = G.gguf_import(path)
    assert back.args == m.args
    assert (back.output.weight is back.tok_embeddings.weight) == m.args.tie_embeddings
    for name, w in m.state_dict().items():
        got = back.state_dict()[name]
        if w.dim() == 1 or dtype == "fp32":
            want = w  # norms stay f32
        elif dtype == "f16":
            want = w.half().float()
        else:
            want = G.dequantize_q8_0(G.quantize_q8_0(w), w.shape)
        assert torch.equal(got, want), name
    if dtype != "fp32":  # the dequantised model writes the same file again
        G.gguf_export(back, tmp_path / "again.gguf", dtype, tok512.vocab)
        assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()
        err = (logits(back, list(range(1, 40))) - logits(m, list(range(1, 40)))).abs().max()
        assert 0 < err < 0.05 * logits(m, list(range(1, 40))).abs().max()


def test_q8_0_matches_the_definition():
    """Blocks of 32 along each row: an f16 scale max|w|/127, then round(w / scale) as int8."""
    torch.manual_seed(3)
    w = torch.randn(4, 64) * torch.tensor([1e-3, 1.0, 30.0, 0.0])[:, None]
    blocks = G.quantize_q8_0(w)
    assert blocks.shape == (8, 34)
    for b in range(8):
        x = w.reshape(-1, 32)[b]
        d = np.float16(float(x.abs().max()) / 127)
        assert blocks[b, :2].view(np.float16)[0] == d
        q = blocks[b, 2:].view(np.int8)
        want = np.zeros(32) if d == 0 else np.clip(np.round(x.numpy() / np.float32(d)), -127, 127)
        assert (q == want).all() and (d == 0 or np.abs(q).max() == 127)
    assert torch.equal(G.dequantize_q8_0(blocks, w.shape), G.dequantize_q8_0(G.quantize_q8_0(
        G.dequantize_q8_0(blocks, w.shape)), w.shape))


def test_cli_gguf_to_bin_is_the_direct_export(tok512, tmp_path):
    """--gguf of an f32 GGUF writes the very .bin and tokenizer file a direct export writes; a q8_0 GGUF
    becomes a .bin whose q8_0 groups of 32 hold exactly its values."""
    m = random_model(CONFIGS["gqa_tied"])
    G.gguf_export(m, tmp_path / "m.gguf", "fp32", tok512.vocab)
    r = cli_here(tmp_path / "a" / "m.bin", f"--gguf={tmp_path / 'm.gguf'}")
    assert r.returncode == 0, r.stderr
    model_export(m, tmp_path / "direct.bin", vocab_id=tok512.identity)
    V.write_bin(tok512.vocab, tmp_path / "direct_tok.bin")
    assert (tmp_path / "a" / "m.bin").read_bytes() == (tmp_path / "direct.bin").read_bytes()
    assert (tmp_path / "a" / "tok512.bin").read_bytes() == (tmp_path / "direct_tok.bin").read_bytes()
    G.gguf_export(m, tmp_path / "q.gguf", "q8_0", tok512.vocab)
    r = cli_here(tmp_path / "b" / "q.bin", f"--gguf={tmp_path / 'q.gguf'}", "--dtype=q8_0", "--group_size=32")
    assert r.returncode == 0, r.stderr
    want, got = G.gguf_import(tmp_path / "q.gguf").state_dict(), load_bin(tmp_path / "b" / "q.bin").state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # and back: --to_gguf from the .bin gives the same GGUF bytes
    r = cli_here(f"--to_gguf={tmp_path / 'again.gguf'}", f"--bin={tmp_path / 'a' / 'm.bin'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.gguf").read_bytes() == (tmp_path / "m.gguf").read_bytes()


def vocab_roundtrip(tok, tmp_path, texts):
    """A vocabulary through a GGUF: the same identity and run.c file, the same ids on texts."""
    m = random_model(ModelArgs(dim=32, n_layers=1, n_heads=2, hidden_dim=32, max_seq_len=32), vocab_size=tok.n_words)
    G.gguf_export(m, tmp_path / "v.gguf", "fp32", tok.vocab)
    back = T.Tokenizer(tmp_path / "v.gguf")  # tokenizer.py reads a GGUF's tokenizer like any tokenizer file
    assert back.kind == "gguf" and back.identity == tok.identity and back.identity
    assert (back.bos_id, back.eos_id, back.end_id) == (tok.bos_id, tok.eos_id, tok.end_id)
    bad = [p for p in texts if V.encode(back.vocab, p) != V.encode(tok.vocab, p)]
    assert not bad, f"{len(bad)} texts encode differently, e.g. {bad[:3]}"
    return back


def test_sentencepiece_vocabularies_roundtrip(shared, tok512, tmp_path):
    back = vocab_roundtrip(tok512, tmp_path, prompts() + SPECIAL)
    assert V.write_bin(back.vocab, tmp_path / "a.bin").read_bytes() == V.write_bin(tok512.vocab, tmp_path / "b.bin").read_bytes()
    sp_ids = [V.encode(back.vocab, p) == tok512.encode(p, False, False) for p in prompts()]
    assert all(sp_ids)  # sentencepiece's own ids
    llama2 = T.Tokenizer(shared / "models" / "tokenizer.model")
    back = vocab_roundtrip(llama2, tmp_path, prompts()[:80])
    assert back.vocab.flags == llama2.vocab.flags


def test_vocabulary_with_special_tokens_roundtrips(shared, tmp_path):
    """Our train_vocab's <|start_story|>/<|end_story|> (user-defined): the identity survives; llama.cpp puts
    the dummy space after each special token, so the imported vocabulary does too (PREFIX_ALWAYS)."""
    import tinystories
    model = tinystories.train_vocab(400, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], tmp_path,
                                    max_stories=300, special_tokens=["<|start_story|>", "<|end_story|>"])
    tok = T.Tokenizer(model)
    back = vocab_roundtrip(tok, tmp_path, prompts())
    assert back.vocab.prefix == V.PREFIX_ALWAYS and tok.vocab.prefix == V.PREFIX_TEXT
    start = back.vocab.pieces.index(b"<|start_story|>")
    assert V.encode(back.vocab, "<|start_story|>Once") == [start] + V.encode(back.vocab, "Once")


@pytest.mark.slow  # seconds: a byte-level BPE trained by tokenizers
def test_bytelevel_vocabulary_roundtrips(bytelevel, tmp_path):
    back = vocab_roundtrip(bytelevel, tmp_path, prompts() + SPECIAL)
    assert V.write_bin(back.vocab, tmp_path / "a.bin").read_bytes() == V.write_bin(bytelevel.vocab, tmp_path / "b.bin").read_bytes()
    assert back.vocab.merges and back.vocab.flags & V.BYTE_LEVEL


def test_cli_refusals(shared, tok512, tmp_path):
    """q8_0 for stories260K (hidden_dim 172), dtypes a format cannot take, no tokenizer: one line, nothing written."""
    src = shared / "models" / "stories260K.bin"
    r = cli_here(tmp_path / "m.bin", f"--to_gguf={tmp_path / 'm.gguf'}", f"--bin={src}",
                 f"--tokenizer={shared / 'models' / 'tok512.model'}", "--dtype=q8_0")
    assert one_line_error(r) == ("export.py: error: q8_0 needs rows whose length is a multiple of 32: "
                                 "blk.0.ffn_down.weight has rows of hidden_dim=172, which is not; use --dtype=f16 or fp32")
    one_line_error(cli_here(f"--to_gguf={tmp_path / 'm.gguf'}", f"--bin={src}", "--dtype=bf16"), "--to_gguf", "bf16",
                   status=2)
    one_line_error(cli_here(tmp_path / "m.bin", f"--bin={src}", "--dtype=f16"), "f16", ".bin", status=2)
    os.symlink(src, tmp_path / "alone.bin")  # no tokenizer beside it
    one_line_error(cli_here(f"--to_gguf={tmp_path / 'm.gguf'}", f"--bin={tmp_path / 'alone.bin'}"), "tokenizer")
    assert not list(tmp_path.glob("m.*"))


def test_plan_refuses_what_llama_cpp_cannot_hold(tok512):
    import copy
    m = random_model(CONFIGS["gqa_tied"])
    v = copy.deepcopy(tok512.vocab)
    v.pieces[301] = v.pieces[300]
    with pytest.raises(ValueError, match="tokens 300 and 301 are both"):
        G.plan(m, "fp32", v)
    with torch.no_grad():
        m.layers[1].attention.wv.weight[0, 0] = 1e5
    assert G.plan(m, "fp32", tok512.vocab)
    with pytest.raises(ValueError, match="blk.1.attn_v.weight has values up to 1e[+]05, beyond what f16 can hold"):
        G.plan(m, "f16", tok512.vocab)
    with pytest.raises(ValueError, match="the tokenizer has 512 tokens, the model 97"):
        G.plan(random_model(CONFIGS["gqa_tied"], vocab_size=97), "fp32", tok512.vocab)


# ------------------------------------------------------------------------------------------------
# malformed files: one line naming the file and what is wrong, never a traceback or a big allocation


@pytest.fixture(scope="module")
def good(tok512, tmp_path_factory):
    """A small valid GGUF, its plan (to write variants from) and its bytes."""
    d = tmp_path_factory.mktemp("bad_gguf")
    m = random_model(CONFIGS["mqa_untied"])
    planned = G.plan(m, "fp32", tok512.vocab)
    G.write(d / "good.gguf", planned)
    return d / "good.gguf", planned, (d / "good.gguf").read_bytes()


def key_pos(data, key):
    """Offset just after key's string in the metadata (where its value type is)."""
    k = key.encode()
    i = data.index(struct.pack("<Q", len(k)) + k)
    return i + 8 + len(k)


def tensor_pos(data, name):
    """Offset of the u32 n_dims after the tensor info's name."""
    return key_pos(data, name)


def patched(data, off, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def byte_cases(data):
    """(name, file bytes, words the error must contain)."""
    tokens = key_pos(data, "tokenizer.ggml.tokens")
    q = tensor_pos(data, "blk.0.attn_q.weight")
    last = tensor_pos(data, "output.weight")
    first_token = tokens + 4 + 4 + 8 + 8  # type, element type, count, the first string's length
    return [
        ("empty", b"", ["truncated"]),
        ("short", data[:10], ["truncated"]),
        ("cut_in_metadata", data[:3000], ["truncated"]),
        ("cut_in_data", data[:-100], ["past the end"]),
        ("magic", b"GGUG" + data[4:], ["bad magic"]),
        ("version_1", patched(data, 4, "<I", 1), ["version 1 "]),
        ("big_endian", patched(data, 4, ">I", 3), ["version 50331648"]),
        ("n_kv", patched(data, 16, "<Q", 1 << 40), ["cannot fit"]),
        ("n_tensors", patched(data, 8, "<Q", 1 << 62), ["cannot fit"]),
        ("key_length", patched(data, 24, "<Q", 1 << 62), ["truncated", "metadata key 0"]),
        ("array_count", patched(data, tokens + 8, "<Q", 1 << 60), ["tokenizer.ggml.tokens claims"]),
        ("string_length", patched(data, first_token - 8, "<Q", 1 << 50), ["truncated", "tokenizer.ggml.tokens[0]"]),
        ("value_type", patched(data, key_pos(data, "general.file_type"), "<I", 13), ["unknown value type 13"]),
        ("array_of_arrays", patched(data, tokens + 4, "<I", 9), ["array of arrays"]),
        ("bool", patched(data, key_pos(data, "tokenizer.ggml.add_bos_token") + 4, "<B", 7), ["bool"]),
        ("utf8", patched(data, first_token, "<B", 0xFF), ["not UTF-8"]),
        ("n_dims", patched(data, q, "<I", 5), ["5 dimensions"]),
        ("q4_K", patched(data, q + 4 + 16, "<I", 12), ["blk.0.attn_q.weight is q4_K", "only f32, f16 and q8_0"]),
        ("tensor_type", patched(data, q + 4 + 16, "<I", 99), ["unknown type 99"]),
        ("offset_past_end", patched(data, last + 4 + 16 + 4, "<Q", 1 << 40), ["output.weight", "past the end"]),
        ("offset_unaligned", patched(data, last + 4 + 16 + 4, "<Q", 8), ["offset 8"]),
    ]


def write_variant(path, planned, meta=None, drop=(), tensors=None):
    """good's plan with metadata values changed ({key: (type, value[, element type])}, None removes it),
    tensors dropped or replaced ({name: (type, ne, fp32 tensor)})."""
    kvs = [kv for kv in planned[0] if kv[0] not in (meta or {})]
    kvs += [(k, *v) for k, v in (meta or {}).items() if v is not None]
    ts = [t for t in planned[1] if t[0] not in drop and t[0] not in (tensors or {})]
    ts += [(k, *v) for k, v in (tensors or {}).items()]
    G.write(path, (kvs, ts, []), verify=False)  # as it is: the readers are what is tested
    return path


def plan_cases(planned):
    """(name, variant arguments, words)."""
    S, U = GM.STRING, GM.U32
    return [
        ("arch", dict(meta={"general.architecture": (S, "qwen2")}), ["architecture 'qwen2' is not supported"]),
        ("tokenizer_model", dict(meta={"tokenizer.ggml.model": (S, "bert")}), ["tokenizer model 'bert'"]),
        ("pre", dict(meta={"tokenizer.ggml.model": (S, "gpt2"), "tokenizer.ggml.pre": (S, "llama-bpe"),
                           "tokenizer.ggml.merges": (GM.ARRAY, [], S)}), ["tokenizer.ggml.pre 'llama-bpe'"]),
        ("no_dim", dict(meta={"llama.embedding_length": None}), ["llama.embedding_length missing"]),
        ("dim_string", dict(meta={"llama.embedding_length": (S, "32")}), ["embedding_length", "expected a single int"]),
        ("block_count", dict(meta={"llama.block_count": (U, 1 << 20)}), ["block_count=1048576 needs"]),
        ("context", dict(meta={"llama.context_length": (U, (1 << 24) - 1)}), ["context_length=16777215", "KV cache"]),
        ("rope_scaling", dict(meta={"llama.rope.scaling.type": (S, "linear")}), ["rope scaling"]),
        ("rope_dims", dict(meta={"llama.rope.dimension_count": (U, 4)}), ["rope.dimension_count=4"]),
        ("token_type", dict(meta={"tokenizer.ggml.token_type": (GM.ARRAY, [1] * 511 + [9], GM.I32)}), ["token 511 has type 9"]),
        ("bos", dict(meta={"tokenizer.ggml.bos_token_id": (U, 512)}), ["bos_token_id=512 is outside"]),
        ("missing", dict(drop=["blk.1.ffn_up.weight"]), ["tensor blk.1.ffn_up.weight missing"]),
        ("shape", dict(tensors={"blk.0.attn_k.weight": (GM.F32_T, (32, 16), torch.zeros(16, 32))}),
         ["blk.0.attn_k.weight has shape [32, 16]", "implies [32, 8]"]),
        ("extra", dict(tensors={"blk.0.attn_q.bias": (GM.F32_T, (32,), torch.zeros(32))}), ["blk.0.attn_q.bias is not part"]),
    ]


def test_malformed_files_are_one_line(good, tmp_path):
    path, planned, data = good
    assert cli_here(tmp_path / "ok.bin", f"--gguf={path}").returncode == 0
    for name, b, words in byte_cases(data):
        (tmp_path / f"{name}.gguf").write_bytes(b)
        r = cli_here(tmp_path / "o.bin", f"--gguf={tmp_path / f'{name}.gguf'}")
        assert f"{name}.gguf: " in one_line_error(r, *words), name
    for name, kw, words in plan_cases(planned):
        r = cli_here(tmp_path / "o.bin", f"--gguf={write_variant(tmp_path / f'{name}.gguf', planned, **kw)}")
        assert f"{name}.gguf: " in one_line_error(r, *words), name
    assert not (tmp_path / "o.bin").exists()


@pytest.mark.slow  # processes of their own
def test_malformed_files_in_a_subprocess_with_2gb(good, tmp_path):
    """Absurd counts and lengths and a FIFO, as the command: exit 1, one line, within 2 GB."""
    path, planned, data = good
    keep = ("n_tensors", "array_count", "string_length")
    for name, b, words in byte_cases(data):
        if name in keep:
            (tmp_path / f"{name}.gguf").write_bytes(b)
            one_line_error(cli(tmp_path / "o.bin", f"--gguf={tmp_path / f'{name}.gguf'}", cap=True), *words)
    os.mkfifo(tmp_path / "fifo.gguf")
    one_line_error(cli(tmp_path / "o.bin", f"--gguf={tmp_path / 'fifo.gguf'}", cap=True), "not a regular file")
    one_line_error(cli_here(tmp_path / "o.bin", f"--gguf={tmp_path}"), "not a regular file")
    one_line_error(cli_here(tmp_path / "o.bin", f"--gguf={tmp_path / 'none.gguf'}"), "no such file")
    assert not (tmp_path / "o.bin").exists()


# ------------------------------------------------------------------------------------------------
# llama.cpp itself (llama-cpp-python builds it from source): what we write is what it runs

try:
    import llama_cpp
except ImportError:
    llama_cpp = None


def needs_llama_cpp(test):
    """Skipped without llama-cpp-python (its own install: it compiles llama.cpp); in the CI tier."""
    return pytest.mark.ci(pytest.mark.slow(pytest.mark.skipif(
        llama_cpp is None, reason="llama-cpp-python is not installed (pip install -r requirements-llama.txt): "
        "the GGUF files are not checked against llama.cpp")(test)))


try:  # the TinyStories-656K twin (a byte-level BPE with <|start_story|>/<|end_story|>), made once here too
    from test_tinystories656k import TEMPLATE, twin  # noqa: F401 (twin is a fixture)
except pytest.skip.Exception:
    TEMPLATE = None

    @pytest.fixture(scope="module")
    def twin():
        pytest.skip("transformers is a test-only dependency")


def llama(path, n_ctx):
    """llama.cpp on a GGUF, every position's logits kept, with an f32 KV cache (its default f16 cache would
    round every key and value). One thread: ggml's threads spin at every barrier, and on a busy 2-core
    machine two of them took 300 times as long."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1,
                           n_threads_batch=1, type_k=0, type_v=0)


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def rel_err(got, want):
    """The largest error at any position, relative to that position's largest logit."""
    return float((np.abs(got - want).max(1) / np.abs(want).max(1)).max())


def padded_ffn(model, hidden):
    """The same model with hidden_dim grown to `hidden` by dead units (w1 and w3 get zero rows, w2 zero
    columns: silu(0) * 0 adds nothing), so that every row length is a multiple of 32 and q8_0 applies."""
    a = model.args
    m = Transformer(ModelArgs(**{**a.__dict__, "hidden_dim": hidden}))
    sd = {}
    for k, w in model.state_dict().items():
        if k.endswith(("w1.weight", "w3.weight")):
            w = torch.cat([w, w.new_zeros(hidden - w.shape[0], w.shape[1])])
        elif k.endswith("w2.weight"):
            w = torch.cat([w, w.new_zeros(w.shape[0], hidden - w.shape[1])], 1)
        sd[k] = w
    m.load_state_dict(sd)
    return m.eval()


@pytest.fixture(scope="module")
def s260k(shared, tok512, tmp_path_factory):
    """stories260K (real trained weights) with tok512, through `export.py --to_gguf` as f32 and f16, and its
    dead-unit padding to hidden_dim 192 as f16 and q8_0; three stories from the shared text as token ids."""
    d = tmp_path_factory.mktemp("s260k")
    src, tok = shared / "models" / "stories260K.bin", shared / "models" / "tok512.model"
    for dtype in ("fp32", "f16"):
        r = cli_here(f"--to_gguf={d / f'{dtype}.gguf'}", f"--bin={src}", f"--tokenizer={tok}", f"--dtype={dtype}")
        assert r.returncode == 0, r.stderr
    m = load_bin(src)
    p = padded_ffn(m, 192)
    for dtype in ("f16", "q8_0"):
        G.gguf_export(p, d / f"pad_{dtype}.gguf", dtype, tok512.vocab)
    texts = stories(shared)[-3:]
    return d, m, p, texts, [tok512.prompt(t)[:512] for t in texts]


@needs_llama_cpp
def test_llama_cpp_f32_sentencepiece(s260k, tok512, run_bin, tmp_path):
    """llama.cpp on the f32 GGUF of stories260K: its tokens of real stories are ours, its logits PyTorch's
    at every position (within 1e-3 relative), its greedy story run.c's (from the .bin --gguf makes of the
    same file), ending where run.c's ends (at BOS: llama2.c's models end a story with it)."""
    d, m, _, texts, ids = s260k
    llm = llama(d / "fp32.gguf", 512)
    for text, want in zip(texts, ids):
        # tok512 collapses runs of spaces (sentencepiece's remove_extra_whitespaces), llama.cpp does not:
        # the one difference (export.py says so when it writes the file), here in the third story
        squeezed = re.sub(" {2,}", " ", text)
        assert llm.tokenize(squeezed.encode(), add_bos=True, special=True)[:512] == want
        assert (llm.tokenize(text.encode(), add_bos=True, special=True)[:512] == want) == (squeezed == text)
        assert rel_err(llama_logits(llm, want), logits(m, want).numpy()) < 1e-3
    r = cli_here(tmp_path / "m.bin", f"--gguf={d / 'fp32.gguf'}")
    assert r.returncode == 0, r.stderr
    for prompt in ("Once upon a time, a little", "One day, a big"):
        out = llm.create_completion(prompt, max_tokens=500, temperature=0.0)["choices"][0]
        assert out["finish_reason"] == "stop"  # the story ended before 500 tokens
        c = subprocess.run([str(run_bin), str(tmp_path / "m.bin"), "-t", "0", "-i", prompt, "-n", "512"],
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 0, c.stderr
        assert c.stdout == prompt + out["text"] + "\n"
    v = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_eot(v) == tok512.bos_id and llama_cpp.llama_vocab_is_eog(v, tok512.bos_id)


@needs_llama_cpp
def test_llama_cpp_f16_and_q8_0_agree_on_real_text(s260k):
    """Top-1 agreement with PyTorch's fp32 model at every position of three real stories, >= 98%: f16 of
    stories260K, and f16 and q8_0 of the same model with dead units padding hidden_dim to 192."""
    d, m, p, _, ids = s260k
    want = [logits(m, x).numpy() for x in ids]
    assert all(np.abs(logits(p, x).numpy() - w).max() < 1e-4 for x, w in zip(ids, want))  # the padding changes nothing
    for name in ("f16", "pad_f16", "pad_q8_0"):
        llm = llama(d / f"{name}.gguf", 512)
        agree = np.concatenate([llama_logits(llm, x).argmax(1) == w.argmax(1) for x, w in zip(ids, want)])
        assert agree.mean() >= 0.98, (name, agree.mean())


@pytest.fixture(scope="module")
def twin_gguf(twin, tmp_path_factory):
    """The 656K twin's .bin (from `export.py --hf`) as an f32 GGUF, by `export.py --to_gguf --bin`."""
    d = tmp_path_factory.mktemp("twin_gguf")
    r = cli_here(f"--to_gguf={d / 'twin.gguf'}", f"--bin={twin[1]}")
    assert r.returncode == 0, r.stderr
    return d / "twin.gguf"


@needs_llama_cpp
def test_llama_cpp_bytelevel_with_special_tokens(shared, twin, twin_gguf, run_bin):
    """The TinyStories-656K twin: llama.cpp's tokens of the template and of real stories are ours, its logits
    PyTorch's, and its greedy story stops at the planted <|end_story|> where run.c's does."""
    hf_dir, model_bin, _, ids, before = twin
    tok = T.Tokenizer(model_bin.parent / "tok2048.bin")
    m = load_bin(model_bin)
    llm = llama(twin_gguf, 512)
    assert llm.tokenize(TEMPLATE.encode(), add_bos=True, special=True) == ids
    for text in [TEMPLATE] + ["<|start_story|>" + s for s in stories(shared)[-3:]]:
        want = tok.prompt(text)[:512]
        assert llm.tokenize(text.encode(), add_bos=True, special=True)[:512] == want
        assert rel_err(llama_logits(llm, want), logits(m, want).numpy()) < 1e-3
    v = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_is_eog(v, tok.end_id)
    out = llm.create_completion(TEMPLATE, max_tokens=50, temperature=0.0)
    # the planted end is the 4th token: three before it, and the end itself not among the completion's
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == len(before)
    c = subprocess.run([str(run_bin), str(model_bin), "-t", "0", "-i", TEMPLATE, "-n", "100"], capture_output=True,
                       timeout=60)
    assert c.returncode == 0, c.stderr
    # a random model emits a stray UTF-8 byte, which llama-cpp-python's text drops
    assert c.stdout.decode(errors="ignore") == "Once upon a time, " + out["choices"][0]["text"] + "\n"


# ------------------------------------------------------------------------------------------------
# llama.cpp's own Python package (gguf): it reads what we write, and what it writes imports for run.c

@pytest.fixture(scope="module")
def gguf_py():
    return pytest.importorskip("gguf", reason="the gguf package (requirements-test.txt) is a test-only dependency")


def test_gguf_package_reads_our_file(gguf_py, tok512, tmp_path):
    m = random_model(CONFIGS["mqa_untied"])
    G.gguf_export(m, tmp_path / "q.gguf", "q8_0", tok512.vocab)
    ours = G.gguf_import(tmp_path / "q.gguf").state_dict()
    r = gguf_py.GGUFReader(tmp_path / "q.gguf")
    names = G.tensor_names(m.args.n_layers, False)
    theirs = {t.name: gguf_py.quants.dequantize(t.data, t.tensor_type) for t in r.tensors}
    assert set(theirs) == set(names.values())
    for k, name in names.items():
        assert torch.equal(torch.from_numpy(np.array(theirs[name], np.float32)).reshape(ours[k].shape), ours[k])
    f = r.fields
    assert str(bytes(f["general.architecture"].parts[-1]), "utf-8") == "llama"
    assert int(f["llama.attention.head_count_kv"].parts[-1][0]) == 1
    assert float(f["llama.rope.freq_base"].parts[-1][0]) == 500000.0
    tokens = [str(bytes(f["tokenizer.ggml.tokens"].parts[i]), "utf-8") for i in f["tokenizer.ggml.tokens"].data]
    assert tokens == V.vocabulary(tok512.vocab)["tokens"]


def test_gguf_package_file_imports_for_run_c(gguf_py, tok512, run_bin, tmp_path):
    """A GGUF written by gguf's GGUFWriter (its q8_0 quantiser for the matrices, f16 embeddings, f32 norms)
    becomes a .bin whose run.c logits are PyTorch's for the weights gguf itself dequantises."""
    Q = gguf_py.GGMLQuantizationType
    m = random_model(CONFIGS["gqa_tied"])
    a = m.args
    w = gguf_py.GGUFWriter(tmp_path / "theirs.gguf", "llama")
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.hidden_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_rope_freq_base(a.rope_theta)
    w.add_rope_dimension_count(a.dim // a.n_heads)
    voc = V.vocabulary(tok512.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(voc["tokens"])
    w.add_token_scores(voc["scores"])
    w.add_token_types(voc["types"])
    w.add_bos_token_id(voc["bos_id"])
    w.add_eos_token_id(voc["eos_id"])
    w.add_unk_token_id(voc["unk_id"])
    want = {}
    for ours, name in G.tensor_names(a.n_layers, True).items():
        x = m.state_dict()[ours].numpy()
        kind = Q.F32 if x.ndim == 1 else Q.F16 if name == "token_embd.weight" else Q.Q8_0
        data = x.astype(np.float16) if kind == Q.F16 else gguf_py.quants.quantize(x, kind) if kind == Q.Q8_0 else x
        w.add_tensor(name, data, raw_dtype=kind)
        want[ours] = torch.from_numpy(np.asarray(gguf_py.quants.dequantize(data, kind), np.float32).reshape(x.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli_here(tmp_path / "m.bin", f"--gguf={tmp_path / 'theirs.gguf'}")
    assert r.returncode == 0, r.stderr
    got = load_bin(tmp_path / "m.bin")
    assert all(torch.equal(got.state_dict()[k], want[k]) for k in want)
    assert T.Tokenizer(tmp_path / "tok512.bin").identity == tok512.identity
    ids = tok512.prompt("Once upon a time, there was a little dog named Max.")
    c = subprocess.run([str(run_bin), str(tmp_path / "m.bin"), "-m", "logits", "-i", " ".join(map(str, ids)), "-o",
                        str(tmp_path / "l.bin")], capture_output=True, timeout=60)
    assert c.returncode == 0, c.stderr
    np.testing.assert_allclose(np.fromfile(tmp_path / "l.bin", np.float32).reshape(len(ids), -1),
                               logits(got, ids).numpy(), atol=1e-4, rtol=1e-4)
