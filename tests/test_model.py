"""model.py: shapes, weight names, parameter counts, RoPE layout, GQA, init, dropout, the KV cache and
sampling, and a real llama2.c checkpoint (stories260K.bin) decoding to its documented story."""
import math
import os
import runpy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import (ClassifierLoss, ModelArgs, Transformer, apply_rope, check_args, ffn_hidden_dim, rope_tables,
                   sample_next)
from optim import Muon

REPO = Path(__file__).resolve().parent.parent
MODEL_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len",
              "tie_embeddings", "dropout")


def tiny(**kw):
    args = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32, multiple_of=8)
    torch.manual_seed(0)
    return Transformer(ModelArgs(**{**args, **kw}))


def load_v0_bin(path):
    """A legacy llama2.c .bin (v0: 7-int header, fp32 weights in Meta order) as a Transformer."""
    raw = Path(path).read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack_from("<7i", raw)
    w = np.frombuffer(raw, dtype="<f4", offset=28)
    hs, kv = dim // n_heads, n_kv * (dim // n_heads)
    args = ModelArgs(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                     vocab_size=abs(vocab), max_seq_len=seq, tie_embeddings=vocab > 0)
    pos, sd = 0, {}

    def take(*shape):
        nonlocal pos
        n = math.prod(shape)
        pos += n
        return torch.from_numpy(w[pos - n:pos].copy()).view(*shape)

    sd["tok_embeddings.weight"] = take(abs(vocab), dim)
    for name, shape in (("attention_norm", (dim,)), ("attention.wq", (dim, dim)), ("attention.wk", (kv, dim)),
                        ("attention.wv", (kv, dim)), ("attention.wo", (dim, dim)), ("ffn_norm", (dim,)),
                        ("feed_forward.w1", (hidden, dim)), ("feed_forward.w2", (dim, hidden)),
                        ("feed_forward.w3", (hidden, dim))):
        for i in range(n_layers):
            sd[f"layers.{i}.{name}.weight"] = take(*shape)
    sd["norm.weight"] = take(dim)
    take(seq * hs)  # freq_cis_real and freq_cis_imag: we compute RoPE ourselves
    sd["output.weight"] = sd["tok_embeddings.weight"] if vocab > 0 else take(abs(vocab), dim)
    assert pos == len(w)
    model = Transformer(args)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_shapes_and_contract_names():
    m = tiny()
    x = torch.randint(0, 64, (3, 10))
    logits, loss = m(x)
    assert logits.shape == (3, 10, 64) and logits.dtype == torch.float32 and loss is None
    _, loss = m(x, x)
    assert loss.shape == () and 3.0 < loss.item() < 5.5  # about ln(64) = 4.16 at init
    hidden, hs = ffn_hidden_dim(m.args), 32 // 4
    expect = {"tok_embeddings.weight": (64, 32), "norm.weight": (32,), "output.weight": (64, 32)}
    for i in range(2):
        expect.update({f"layers.{i}.attention_norm.weight": (32,), f"layers.{i}.ffn_norm.weight": (32,),
                       f"layers.{i}.attention.wq.weight": (4 * hs, 32), f"layers.{i}.attention.wk.weight": (2 * hs, 32),
                       f"layers.{i}.attention.wv.weight": (2 * hs, 32), f"layers.{i}.attention.wo.weight": (32, 4 * hs),
                       f"layers.{i}.feed_forward.w1.weight": (hidden, 32), f"layers.{i}.feed_forward.w2.weight": (32, hidden),
                       f"layers.{i}.feed_forward.w3.weight": (hidden, 32)})
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expect
    assert m.output.weight is m.tok_embeddings.weight
    untied = tiny(tie_embeddings=False)
    assert untied.output.weight is not untied.tok_embeddings.weight
    n = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert n(untied) - n(m) == 64 * 32


@pytest.mark.parametrize("tie", [True, False])
def test_loss_and_gradients_equal_plain_cross_entropy(tie, monkeypatch):
    """The chunked classifier loss against F.cross_entropy on the full logits: the loss, every
    gradient (tied and untied classifier), ignored targets, several chunks, and no_grad."""
    m = tiny(tie_embeddings=tie)
    x, y = torch.randint(0, 64, (3, 10)), torch.randint(0, 64, (3, 10))
    y[0, 2] = y[2, 9] = -1
    logits, _ = m(x)
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    ref.backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    monkeypatch.setattr(ClassifierLoss, "chunk_rows", lambda vocab, dim: 7)  # 5 chunks, the last one short
    _, loss = m(x, y)
    (2 * loss).backward()  # backward scales the precomputed gradients by the incoming one
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, 2 * want[n], atol=1e-6, rtol=1e-5, msg=n)
    with torch.no_grad():
        assert m(x, y)[1].item() == pytest.approx(ref.item(), abs=1e-6)


def test_loss_is_finite_when_the_target_probability_underflows():
    """A target whose softmax probability is below fp32's smallest float still gets its true loss."""
    h = torch.tensor([[1.0, 0.0]], requires_grad=True)
    w = torch.tensor([[100.0, 0.0], [-100.0, 0.0], [0.0, 1.0]], requires_grad=True)  # logits 100, -100, 0
    t = torch.tensor([1])
    loss = ClassifierLoss.apply(h, w, t)
    ref = F.cross_entropy(h @ w.t(), t)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(ref.item(), rel=1e-6)  # 200
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


def test_hidden_dim_rule_and_bad_shapes():
    # llama2.c: int(2 * 4 * dim / 3) rounded up to multiple_of; stories260K has 172
    assert ffn_hidden_dim(ModelArgs(dim=64, multiple_of=4)) == 172
    assert ffn_hidden_dim(ModelArgs(dim=288, multiple_of=32)) == 768
    assert ffn_hidden_dim(ModelArgs(dim=288, hidden_dim=100)) == 100
    for bad, word in ((dict(dim=30, n_heads=4), "divisible"), (dict(dim=36, n_heads=12), "even"),
                      (dict(dim=32, n_heads=4, n_kv_heads=3), "divide"), (dict(dropout=1.0), "dropout")):
        with pytest.raises(ValueError, match=word):
            check_args(ModelArgs(**bad))
    m = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_preset_parameter_counts():
    presets = sorted((REPO / "config").glob("*.py"))
    assert len(presets) >= 8
    for path in presets:
        c = runpy.run_path(str(path))
        if "_parameters" not in c:  # a fine-tuning preset: its shape is the model file's
            continue
        with torch.device("meta"):  # no memory, no init time: the 110M model builds instantly
            m = Transformer(ModelArgs(**{k: c[k] for k in MODEL_KEYS}))
        assert sum(p.numel() for p in m.parameters()) == c["_parameters"], path.name
    c = runpy.run_path(str(REPO / "config" / "stories260K.py"))
    assert (c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["vocab_size"], c["max_seq_len"]) == \
        (64, 5, 8, 4, 512, 512)


def test_rope_rotates_interleaved_pairs():
    hs, T, theta = 8, 5, 10000.0
    cos, sin = rope_tables(hs, T, theta)
    x = torch.randn(1, T, 2, hs)
    y = apply_rope(x, cos, sin)
    for t in range(T):
        for i in range(hs // 2):
            angle = t * theta ** (-2 * i / hs)
            a, b = x[0, t, :, 2 * i], x[0, t, :, 2 * i + 1]
            torch.testing.assert_close(y[0, t, :, 2 * i], a * math.cos(angle) - b * math.sin(angle))
            torch.testing.assert_close(y[0, t, :, 2 * i + 1], a * math.sin(angle) + b * math.cos(angle))


def test_gqa_equals_full_attention_with_repeated_kv_heads():
    gqa = tiny(n_heads=8, n_kv_heads=2)  # each kv head serves 4 consecutive query heads
    full = tiny(n_heads=8, n_kv_heads=8)
    sd = gqa.state_dict()
    hs = 32 // 8
    for i in range(2):
        for w in ("wk", "wv"):
            key = f"layers.{i}.attention.{w}.weight"
            sd[key] = sd[key].view(2, hs, 32).repeat_interleave(4, dim=0).reshape(8 * hs, 32)
    full.load_state_dict(sd)
    x = torch.randint(0, 64, (2, 20))
    torch.testing.assert_close(gqa(x)[0], full(x)[0], atol=1e-5, rtol=1e-5)
    # and the grouping matters: pairing kv heads with the wrong query heads changes the output
    for i in range(2):
        for w in ("wk", "wv"):
            key = f"layers.{i}.attention.{w}.weight"
            sd[key] = gqa.state_dict()[key].view(2, hs, 32).repeat(4, 1, 1).reshape(8 * hs, 32)
    full.load_state_dict(sd)
    assert not torch.allclose(gqa(x)[0], full(x)[0], atol=1e-4)


def test_init_std():
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=256, n_layers=8, n_heads=4, vocab_size=1000))
    resid = 0.02 / math.sqrt(2 * 8)
    for name, p in m.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1.0), name
            continue
        want = resid if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")) else 0.02
        assert abs(p.std().item() - want) < 0.03 * want, (name, p.std().item(), want)
        assert abs(p.mean().item()) < 0.05 * want, name


def test_dropout_only_in_training():
    m = tiny(dropout=0.5)
    x = torch.randint(0, 64, (2, 12))
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)
    m0 = tiny(dropout=0.0).train()
    torch.testing.assert_close(m0(x)[0], m0.eval()(x)[0])


def test_kv_cache_forward_matches_full_forward():
    m = tiny().eval()
    x = torch.randint(0, 64, (2, 24))
    full = m(x)[0]
    cache = m.new_cache(2)
    parts = [m(x[:, :9], cache=cache, start_pos=0)[0], m(x[:, 9:17], cache=cache, start_pos=9)[0]]
    parts += [m(x[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(17, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def greedy_no_cache(m, idx, n):
    for _ in range(n):
        idx = torch.cat((idx, m(idx)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def test_generate_with_cache_equals_no_cache_greedy():
    m = tiny(n_heads=8, n_kv_heads=2, max_seq_len=40).eval()
    prompt = torch.randint(3, 64, (3, 5))
    ref = greedy_no_cache(m, prompt, 30)
    out = m.generate(prompt, 30, temperature=0.0, stop_tokens=())
    assert torch.equal(out, ref)
    # the context bounds generation: 5 + 100 would not fit in 40 positions
    assert m.generate(prompt, 100, temperature=0.0, stop_tokens=()).shape == (3, 40)


def test_generate_stops_at_stop_token():
    m = tiny(max_seq_len=40).eval()
    prompt = torch.randint(3, 64, (1, 4))
    ref = greedy_no_cache(m, prompt, 30)[0, 4:].tolist()
    stop = ref[5]
    first = ref.index(stop)
    out = m.generate(prompt, 30, temperature=0.0, stop_tokens=(stop,))[0, 4:].tolist()
    assert out == ref[:first + 1]  # ends right after the first stop token
    # in a batch, a finished row repeats its stop token until every row is done
    other = torch.randint(3, 64, (1, 4))
    both = m.generate(torch.cat((prompt, other)), 30, temperature=0.0, stop_tokens=(stop,))
    row = both[0, 4:].tolist()
    assert row[:first + 1] == ref[:first + 1] and set(row[first:]) == {stop}


def test_sample_next_filters():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0]]).repeat(2000, 1)
    assert torch.equal(sample_next(logits, temperature=0.0), torch.full((2000,), 1))
    assert set(sample_next(logits, top_k=2).tolist()) == {1, 3}
    assert set(sample_next(logits, top_k=1).tolist()) == {1}
    # probabilities about .47, .43, .06, ...: top_p 0.5 keeps two tokens, top_p 0.3 one
    assert set(sample_next(logits, top_p=0.5).tolist()) == {1, 3}
    assert set(sample_next(logits, top_p=0.3).tolist()) == {1}
    assert set(sample_next(logits).tolist()) == {0, 1, 2, 3, 4}
    # a flat distribution (the full-sort path): top_p 0.6 of 4 equal tokens keeps 3 of them
    assert len(set(sample_next(torch.zeros(2000, 4), top_p=0.6).tolist())) == 3
    frac = (sample_next(logits, temperature=1.0) == 1).float().mean().item()
    assert abs(frac - torch.softmax(logits[0], -1)[1].item()) < 0.05


def test_sampler_is_total_on_nonfinite_logits():
    """NaN or infinite logits are a ValueError naming the position, for every sampling mode: greedy used
    to return the NaN's index silently, sampling raised torch.multinomial's RuntimeError."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        logits = torch.zeros(2, 5)
        logits[1, 3] = bad
        what = "NaN" if bad != bad else "infinite"
        for kw in (dict(temperature=0.0), dict(), dict(top_k=2), dict(top_p=0.5), dict(top_k=3, top_p=0.9)):
            with pytest.raises(ValueError, match=f"^the model produced {what} logits at position 7: is the "
                                                 "checkpoint diverged\\?$"):
                sample_next(logits, pos=7, **kw)
    m = tiny().eval()
    with torch.no_grad():
        m.norm.weight.fill_(3e38)  # finite weights whose activations overflow
    with pytest.raises(ValueError, match="logits at position 3: is the checkpoint diverged"):
        m.generate(torch.tensor([[1, 5, 6, 7]]), 10)  # the first sampled token follows position 3


def test_tiny_temperature_does_not_overflow():
    """fp32 logits / 1e-40 overflow to inf (then NaN probabilities); the same distribution is sampled from
    (logits - max) / t: here the most likely token, every time."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0]]).repeat(100, 1)
    assert set(sample_next(logits, temperature=1e-40).tolist()) == {1}
    assert set(sample_next(logits, temperature=1e-40, top_k=3, top_p=0.9).tolist()) == {1}


def test_configure_optimizers_decays_matrices_only():
    m = tiny()
    (opt,) = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in m.parameters())
    assert sum(p is m.tok_embeddings.weight for p in decay["params"]) == 1  # tied: once


@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_block_matrices(tie):
    m = tiny(tie_embeddings=tie)
    muon, adamw = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", "muon", muon_lr=0.05)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in m.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    assert in_muon == sorted(n for n, p in m.named_parameters() if n.startswith("layers.") and p.dim() == 2)
    assert muon.param_groups[0]["lr"] == 0.05 and [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]
    rest = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    assert sorted(rest + in_muon) == sorted(names.values())  # every weight once, in one of them
    assert {"tok_embeddings.weight", "norm.weight"} <= set(rest) and ("output.weight" in rest) != tie
    with pytest.raises(ValueError, match="optimizer"):
        m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", "sgd")


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_equals_torch_muon(nesterov):
    """optim.Muon runs the matrices of a shape as one batch: bit for bit torch.optim.Muon's steps,
    state and checkpoint (wide, tall and square matrices, a parameter without a gradient)."""
    torch.manual_seed(0)
    shapes = [(8, 8), (24, 8), (8, 24), (24, 8), (8, 8), (6, 10)]
    ref = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov,
              adjust_lr_fn="original" if nesterov else "match_rms_adamw")
    o_ref, o_ours = torch.optim.Muon(ref, **kw), Muon(ours, **kw)
    for step in range(4):
        for i, s in enumerate(shapes):
            g = None if (i == 4 and step < 2) else torch.randn(s)  # one matrix joins late
            ref[i].grad, ours[i].grad = g, None if g is None else g.clone()
        o_ref.step()
        o_ours.step()
        for a, b in zip(ref, ours):
            assert torch.equal(a, b)
    for a, b in zip(o_ref.state_dict()["state"].values(), o_ours.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert o_ref.state_dict()["param_groups"] == o_ours.state_dict()["param_groups"]


def test_flops_and_mfu():
    m = tiny(tie_embeddings=False)
    linear = sum(p.numel() for n, p in m.named_parameters() if n.endswith(("wq.weight", "wk.weight", "wv.weight",
                                                                         "wo.weight", "w1.weight", "w2.weight",
                                                                         "w3.weight", "output.weight")))
    assert m.flops_per_token(16) == 6 * linear + 12 * 2 * 32 * 16
    assert m.estimate_mfu(1000.0, 1e12, 16) == pytest.approx(m.flops_per_token(16) * 1000.0 / 1e12)


def test_stories260K_bin_greedy_story(shared):
    """llama2.c's stories260K weights in our model greedily tell the story its doc/stories260K.md shows:
    every piece (RoPE layout, GQA grouping, RMSNorm, SwiGLU, tied classifier, KV cache) must match."""
    spm = pytest.importorskip("sentencepiece")
    m = load_v0_bin(shared / "models" / "stories260K.bin")
    assert sum(p.numel() for p in m.parameters()) == 260_032
    sp = spm.SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))
    out = m.generate(torch.tensor([[1]]), 120, temperature=0.0, stop_tokens=())
    text = sp.decode(out[0].tolist())
    assert text.startswith("Once upon a time, there was a little girl named Lily. She loved to play outside in "
                           "the park. One day, she saw a big, red ball. She wanted to play with it, but it was "
                           "too high.\nLily's mom said, \"Lily, let's go to the park.\""), text


def test_free_cores_counts_other_processes_only(monkeypatch):
    """Busy jiffies of the machine minus this process's own CPU time, per wall second, in cores."""
    import machine
    hz = os.sysconf("SC_CLK_TCK")
    readings = iter([(0, 0.0, 0.0), (int(1.5 * hz), 0.5, 1.0), (int(2.1 * hz), 1.5, 2.0)])
    monkeypatch.setattr(machine, "cpu_reading", lambda: next(readings))
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(machine.time, "sleep", lambda s: None)
    n, r = machine.free_cores()  # 1.5 cores busy, 0.5 of them ours: one other core busy
    assert n == 1 and r == (int(1.5 * hz), 0.5, 1.0)
    n, _ = machine.free_cores(r)  # 0.6 cores busy, all ours (1.0 s of CPU in 1 s): nothing else runs
    assert n == 2
    monkeypatch.setattr(machine, "cpu_reading", lambda: None)  # no /proc/stat: leave torch alone
    assert machine.free_cores() == (None, None)


def test_niced_neighbours_leave_their_cores_free(monkeypatch, tmp_path):
    """A nice 19 job yields its core to ours: its time (/proc/stat's nice column) is not busy, unless
    this process is niced too and so competes with it on equal terms."""
    import io
    import machine
    stat = "cpu  100 500 50 1000 7 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    monkeypatch.setattr(machine, "open", lambda path, *a, **k: io.StringIO(stat), raising=False)
    monkeypatch.setattr(machine.os, "getpriority", lambda which, who: 0)
    assert machine.cpu_reading()[0] == 100 + 50 + 3 + 2 + 1  # user, system, irq, softirq, steal
    monkeypatch.setattr(machine.os, "getpriority", lambda which, who: 10)
    assert machine.cpu_reading()[0] == 100 + 500 + 50 + 3 + 2 + 1


def test_use_free_cores_leaves_omp_num_threads_alone(monkeypatch):
    import machine
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(machine, "free_cores", lambda prev=None: (_ for _ in ()).throw(AssertionError("read load")))
    before = torch.get_num_threads()
    assert machine.use_free_cores() is None and torch.get_num_threads() == before
