"""Hugging Face interop: hf_import/hf_export against transformers' LlamaForCausalLM, offline, tiny random models."""
import json
import os
import struct

import pytest
import torch

from conftest import SHARED

from binfile import load_bin, model_export
from hf import hf_export, hf_import
from model import ModelArgs, Transformer

transformers = pytest.importorskip(
    "transformers", reason="transformers is a test-only dependency (requirements-test.txt); HF interop is untested")

TOKENS = torch.tensor([[1, 5, 17, 3, 60, 42, 8, 2, 33, 9, 11, 50], [1, 7, 7, 7, 20, 21, 22, 23, 24, 25, 26, 27]])


def hf_llama(tied, n_kv_heads, seed=0):
    """A small random LlamaForCausalLM: GQA or MQA, rope_theta and rms_norm_eps away from the defaults."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=n_kv_heads, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500000.0,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # non-trivial norms, larger weights: a wrong permutation must show
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.1 * torch.randn_like(p))
    return model.eval()


def hf_logits(model):
    with torch.no_grad():
        return model(TOKENS).logits.float()


def our_logits(model):
    with torch.no_grad():
        return model(TOKENS)[0]


@pytest.mark.parametrize("tied,n_kv_heads", [(True, 2), (False, 2), (False, 1), (True, 6)])
def test_import_from_save_pretrained_matches_transformers(tmp_path, tied, n_kv_heads):
    hf = hf_llama(tied, n_kv_heads)
    hf.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors")
    m = hf_import(tmp_path)
    a = m.args
    assert (a.dim, a.n_heads, a.n_kv_heads, a.hidden_dim, a.vocab_size, a.max_seq_len) == (48, 6, n_kv_heads, 100, 97, 64)
    assert (a.rope_theta, a.norm_eps, a.tie_embeddings) == (500000.0, 1e-6, tied)
    assert (m.output.weight is m.tok_embeddings.weight) == tied
    torch.testing.assert_close(our_logits(m), hf_logits(hf), atol=1e-5, rtol=1e-5)

    # on to a v3 .bin and back: the same numbers (rope_theta and norm_eps travel in the header)
    model_export(m, tmp_path / "m.bin", 3)
    m2 = load_bin(tmp_path / "m.bin")
    assert torch.equal(our_logits(m2), our_logits(m))


def test_import_pytorch_model_bin_and_sharded_safetensors(tmp_path):
    hf = hf_llama(False, 2, seed=1)
    want = hf_logits(hf)
    # sharded safetensors with an index
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    torch.testing.assert_close(our_logits(hf_import(tmp_path / "sharded")), want, atol=1e-5, rtol=1e-5)
    # a pytorch_model.bin (older checkpoints), in bf16 to exercise the conversion
    d = tmp_path / "ptbin"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save({k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}, d / "pytorch_model.bin")
    m = hf_import(d)
    assert torch.equal(m.tok_embeddings.weight, hf.model.embed_tokens.weight.to(torch.bfloat16).float())
    assert (our_logits(m) - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("tied,n_kv_heads", [(True, 2), (False, 1)])
def test_export_loads_in_transformers_with_matching_logits(tmp_path, tied, n_kv_heads):
    torch.manual_seed(3)
    args = ModelArgs(dim=48, n_layers=2, n_heads=6, n_kv_heads=n_kv_heads, vocab_size=67, hidden_dim=100, max_seq_len=40,
                     rope_theta=250000.0, norm_eps=1e-6, tie_embeddings=tied)
    m = Transformer(args).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.1 * torch.randn_like(p))
    hf_export(m, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_theta"] == 250000.0 and config["rope_parameters"]["rope_theta"] == 250000.0
    hf, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.tie_word_embeddings == tied and hf.config.num_key_value_heads == n_kv_heads
    torch.testing.assert_close(hf_logits(hf.eval()), our_logits(m), atol=1e-5, rtol=1e-5)
    # and back: the import undoes the export exactly
    m2 = hf_import(tmp_path)
    assert m2.args == m.args
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())


def test_import_refuses_what_it_cannot_represent(tmp_path):
    hf = hf_llama(True, 2)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, why in (({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
                        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope scaling"),
                        ({"attention_bias": True}, "biases"),
                        ({"head_dim": 16}, "head_dim")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=why):
            hf_import(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors"):
        hf_import(tmp_path)


@pytest.mark.slow  # processes of their own
def test_cli_import_and_export(repo, tmp_path):
    import subprocess
    import sys
    hf = hf_llama(False, 2, seed=4)
    hf.save_pretrained(tmp_path / "in")
    run = lambda *a: subprocess.run([sys.executable, str(repo / "export.py"), *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, cwd=repo)
    r = run(tmp_path / "m.bin", f"--hf={tmp_path / 'in'}", "--version=3")
    assert r.returncode == 0, r.stderr
    torch.testing.assert_close(our_logits(load_bin(tmp_path / "m.bin")), hf_logits(hf), atol=1e-5, rtol=1e-5)
    r = run(f"--to_hf={tmp_path / 'out'}", f"--bin={tmp_path / 'm.bin'}")
    assert r.returncode == 0, r.stderr
    hf2 = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(hf2), hf_logits(hf), atol=1e-5, rtol=1e-5)
    r = run(f"--to_hf={tmp_path / 'out2'}", f"--hf={tmp_path / 'nothing'}")
    assert r.returncode == 1 and "nothing" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -----------------------------------------------------------------------------
# hostile directories: one line naming the file, never a traceback, nothing big allocated or read


def export_hf(repo, src, out, capped=False):
    """export.py OUT --hf=src: its exit status and stderr. In this process (its error is SystemExit's
    message; any other exception fails the test), or with capped=True in one whose address space is
    2 GB (a config that made it allocate its claimed size would fail with MemoryError instead)."""
    import resource
    import subprocess
    import sys

    import export
    if not capped:
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                export.main([str(out), f"--hf={src}"])
                code = 0
            except SystemExit as e:
                code, msg = 1, str(e.code)
                print(msg, file=err)
        return subprocess.CompletedProcess([], code, "", err.getvalue())

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    return subprocess.run([sys.executable, str(repo / "export.py"), str(out), f"--hf={src}"], capture_output=True,
                          text=True, timeout=120, preexec_fn=cap)


def one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("export.py: error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile") / "good"
    hf_llama(True, 2).save_pretrained(d)
    hf_llama(False, 2).save_pretrained(d.parent / "sharded", max_shard_size="20KB")
    return d


def variant(good_dir, tmp_path, config=None, files=None):
    """A copy of the good directory with config.json fields changed and files replaced ({name: bytes or None})."""
    import shutil
    d = tmp_path / "hf"
    shutil.copytree(good_dir, d)
    if config is not None:
        c = json.loads((d / "config.json").read_text())
        c.update(config)
        (d / "config.json").write_text(json.dumps(c))
    for name, data in (files or {}).items():
        if data is None:
            os.remove(d / name)
        else:
            (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("change,words", [
    ({"hidden_size": 1e9}, ["hidden_size=1000000000.0", "expected an integer"]),
    ({"hidden_size": 10 ** 9}, ["hidden_size=1000000000", "expected an integer in 1 .. 16777215"]),
    ({"hidden_size": 6 << 17, "intermediate_size": 1 << 22, "head_dim": None}, ["model.embed_tokens.weight", "config.json implies"]),
    ({"num_hidden_layers": 100000}, ["num_hidden_layers=100000 needs 900002 weights, the weight files hold 20"]),
    ({"vocab_size": -3}, ["vocab_size=-3"]),
    ({"num_attention_heads": True}, ["num_attention_heads=True"]),
    ({"num_key_value_heads": 4}, ["num_key_value_heads=4 must divide num_attention_heads=6"]),
    ({"rope_theta": -1}, ["rope_theta=-1", "positive finite"]),
    ({"rope_theta": 0}, ["rope_theta=0"]),
    ({"rope_theta": float("inf")}, ["rope_theta=inf"]),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}}, ["rope_theta=nan"]),
    ({"rms_norm_eps": 0}, ["rms_norm_eps=0"]),
    ({"rms_norm_eps": 2.0}, ["rms_norm_eps=2.0"]),
    ({"tie_word_embeddings": "yes"}, ["tie_word_embeddings='yes'"]),
    ({"model_type": "gpt2"}, ["model_type 'gpt2' is not supported"]),
    ({"rope_scaling": "linear"}, ["rope_parameters / rope_scaling must be objects"]),
])
@pytest.mark.slow  # processes of their own
def test_hostile_config(repo, good_dir, tmp_path, change, words):
    d = variant(good_dir, tmp_path, config=change)
    one_line_error(export_hf(repo, d, tmp_path / "m.bin", capped="hidden_size" in change), *words)
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("name,data,words", [
    ("config.json", b"{not json", ["config.json: not a readable JSON config.json"]),
    ("config.json", b"[1, 2]", ["config.json: expected a JSON object, got list"]),
    ("config.json", None, ["config.json: cannot read the config.json"]),
    ("model.safetensors", b"\x01\x02", ["not a safetensors file (2 bytes)"]),
    ("model.safetensors", struct.pack("<Q", 1 << 60) + b"{}", ["header length 1152921504606846976"]),
    ("model.safetensors", struct.pack("<Q", 4) + b"{{{{", ["bad JSON header"]),
    ("model.safetensors", struct.pack("<Q", 2) + b"[]", ["the header is not a JSON object"]),
    ("tokenizer.json", b"\xff\xfe garbage", ["tokenizer.json: not a readable JSON tokenizer.json"]),
    ("tokenizer_config.json", b"[]", ["tokenizer_config.json: expected a JSON object"]),
])
def test_hostile_files(repo, good_dir, tmp_path, name, data, words):
    if name.startswith("tokenizer"):  # a 512-token model with tok512's tokenizer, then broken
        import tokenizer as T
        import hf_tokenizer
        d = tmp_path / "hf"
        config = transformers.LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=32)
        transformers.LlamaForCausalLM(config).save_pretrained(d)
        hf_tokenizer.write_tokenizer(T.Tokenizer(SHARED / "models" / "tok512.model").vocab, d, 32)
        assert export_hf(repo, d, tmp_path / "ok.bin").returncode == 0  # good as written
        (d / name).write_bytes(data)
    else:
        d = variant(good_dir, tmp_path, files={name: data})
    one_line_error(export_hf(repo, d, tmp_path / "m.bin"), *words)


def tensor_entry(dtype="F32", shape=(97, 48), offsets=None):
    import math
    n = math.prod(shape) * 4
    return {"dtype": dtype, "shape": list(shape), "data_offsets": offsets or [0, n]}


@pytest.mark.parametrize("entry,words", [
    (tensor_entry(offsets=[0, 1 << 40]), ["outside the"]),
    (tensor_entry(offsets=[-8, 10]), ["outside the"]),
    (tensor_entry(shape=(97, 47), offsets=[0, 97 * 48 * 4]), ["has 18624 bytes for shape [97, 47]"]),
    (tensor_entry(shape=(97, 47)), ["is F32 [97, 47], config.json implies a float tensor of shape [97, 48]"]),
    (tensor_entry(dtype="I64", shape=(97, 24)), ["is I64 [97, 24], config.json implies a float tensor"]),
    ({"dtype": "F32", "shape": "97x48", "data_offsets": [0, 4]}, ["malformed header entry"]),
])
def test_hostile_safetensors_header(repo, good_dir, tmp_path, entry, words):
    raw = (good_dir / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    header["model.embed_tokens.weight"] = entry
    hj = json.dumps(header).encode()
    d = variant(good_dir, tmp_path, files={"model.safetensors": struct.pack("<Q", len(hj)) + hj + raw[8 + n:]})
    one_line_error(export_hf(repo, d, tmp_path / "m.bin"), "model.safetensors", *words)


def test_hostile_weight_map(repo, good_dir, tmp_path):
    import shutil
    src = good_dir.parent / "sharded"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    for target, words in (("/dev/zero", "expected a file name in"), ("../good/model.safetensors", "expected a file name in"),
                          ("missing.safetensors", "cannot read the safetensors file"), ("link", "is not a regular file")):
        d = tmp_path / f"case{len(os.listdir(tmp_path))}"
        shutil.copytree(src, d)
        os.symlink("/dev/zero", d / "link")
        wm = {k: (target if v == first else v) for k, v in index["weight_map"].items()}
        (d / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": wm}))
        one_line_error(export_hf(repo, d, tmp_path / "m.bin"), words)
    d = tmp_path / "notmap"
    shutil.copytree(src, d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    one_line_error(export_hf(repo, d, tmp_path / "m.bin"), "weight_map must map tensor names to file names")


@pytest.mark.slow  # processes of their own
def test_huge_or_garbage_pytorch_bin_is_refused_by_size(repo, good_dir, tmp_path):
    d = variant(good_dir, tmp_path, files={"model.safetensors": None})
    with open(d / "pytorch_model.bin", "wb") as f:  # sparse: 64 GB on paper, nothing on disk
        f.truncate(64 << 30)
    one_line_error(export_hf(repo, d, tmp_path / "m.bin", capped=True), "the weight files hold 68,719,476,736 bytes",
                   "config.json's model at most")
    (d / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    one_line_error(export_hf(repo, d, tmp_path / "m.bin"), "pytorch_model.bin: not a readable state dict")
    os.remove(d / "pytorch_model.bin")
    os.symlink("/dev/zero", d / "pytorch_model.bin")
    one_line_error(export_hf(repo, d, tmp_path / "m.bin", capped=True), "is not a regular file")
