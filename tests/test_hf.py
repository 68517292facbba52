"""Hugging Face interop: hf_import/hf_export against transformers' LlamaForCausalLM, offline, tiny random models."""
import json
import os

import pytest
import torch

from export import hf_export, hf_import, load_bin, model_export
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
