"""The pure pieces of the llama.cpp benchmarks (bench/bench_run.py, bench/bench_quant.py,
bench/llama_tools.py): reading llama-bench's json, the paired-ratio table, the windows and bits of the
quality measure, and what the benchmark says when llama.cpp is not built. No timing, no building."""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED

sys.path.insert(0, str(REPO / "bench"))
import bench_quant  # noqa: E402
import bench_run  # noqa: E402
import llama_tools  # noqa: E402

# llama-bench -o json of llama.cpp at llama-cpp-python 0.3.36 (-p 16 -n 8 -r 2 on a tiny model), cut to the
# fields the benchmark reads and a few around them
BENCH_JSON = """[
  {
    "build_commit": "unknown", "build_number": 0, "model_type": "llama ?B F32", "n_threads": 2,
    "n_prompt": 16, "n_gen": 0, "n_depth": 0, "avg_ns": 1000000, "stddev_ns": 10, "avg_ts": 16000.5,
    "stddev_ts": 100.0,
    "samples_ns": [ 990000, 1010000 ],
    "samples_ts": [ 16161.6, 15841.6 ]
  },
  {
    "build_commit": "unknown", "build_number": 0, "model_type": "llama ?B F32", "n_threads": 2,
    "n_prompt": 0, "n_gen": 8, "n_depth": 0, "avg_ns": 2000000, "stddev_ns": 10, "avg_ts": 4000.0,
    "stddev_ts": 10.0,
    "samples_ns": [ 2000000, 2000000 ],
    "samples_ts": [ 4000.0, 4000.0 ]
  }
]
"""


def test_bench_json_reads_every_test_and_its_samples():
    tests = llama_tools.bench_json(BENCH_JSON)
    assert tests == [(16, 0, 2, [16161.6, 15841.6]), (0, 8, 2, [4000.0, 4000.0])]


@pytest.mark.parametrize("text", ["", "llama-bench: error", "[{\"n_prompt\": 1}]", "{}"])
def test_bench_json_refuses_other_output_in_one_line(text):
    with pytest.raises(ValueError) as e:
        llama_tools.bench_json(text)
    assert "llama-bench" in str(e.value) and "\n" not in str(e.value)


def test_compare_is_the_median_of_the_ratios_within_rounds():
    ours, theirs = [10.0, 20.0, 30.0], [5.0, 40.0, 20.0]  # ratios 2, 0.5, 1.5; the medians' ratio is 1
    assert bench_run.compare(ours, theirs) == (20.0, 20.0, 1.5)
    # seconds: ours' speed-up is theirs / ours (2, 0.5, 3; ours / theirs would give 0.5)
    assert bench_run.compare([1.0, 2.0, 3.0], [2.0, 1.0, 9.0], faster=min) == (2.0, 2.0, 2.0)


def test_markdown_table_has_a_header_a_rule_and_a_line_per_row():
    lines = bench_run.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]]).split("\n")
    assert lines == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]


def test_tools_are_found_in_a_folder_its_bin_or_its_build_bin(tmp_path):
    assert llama_tools.find(tmp_path) is None
    for sub in ("", "bin", "build/bin"):
        d = tmp_path / sub if sub else tmp_path / "flat"
        d.mkdir(parents=True, exist_ok=True)
        for t in llama_tools.TOOLS:
            (d / t).write_text("#!/bin/sh\n")
            (d / t).chmod(0o755)
        root = tmp_path if sub else d
        assert llama_tools.find(root) == {t: d / t for t in llama_tools.TOOLS}
        for t in llama_tools.TOOLS:
            (d / t).unlink()


def test_without_llama_cpp_the_benchmark_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    """Asked for the llama.cpp table alone, it fails in one line saying how to get the tools; beside other
    tables, a note (the rest still runs)."""
    monkeypatch.setattr(sys, "argv", ["bench_run.py", "--tables", "llamacpp", "--llama-cpp", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        bench_run.main()
    msg = str(e.value)
    assert msg.startswith("bench_run.py: error: ") and "\n" not in msg, msg
    assert "python bench/llama_tools.py" in msg and "--llama-cpp" in msg and f"{tmp_path} does not hold" in msg
    monkeypatch.setattr(sys, "argv", ["bench_run.py", "--tables", "llamacpp", "--llama-cpp", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="nope: no such folder"):
        bench_run.main()
    monkeypatch.setattr(bench_run, "run_llama2c_tables", lambda a, threads: print("llama2c tables ran"))
    monkeypatch.setattr(sys, "argv", ["bench_run.py", "--tables", "llamacpp,llama2c", "--llama-cpp", str(tmp_path)])
    bench_run.main()
    out = capsys.readouterr()
    note = [line for line in out.err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and str(tmp_path) in note[0] and "llama2c tables ran" in out.out, note


def test_a_bad_table_is_named(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_run.py", "--tables", "llamacpp,lama2c"])
    with pytest.raises(SystemExit) as e:
        bench_run.main()
    assert e.value.code == 2 and "--tables=lama2c: expected some of" in capsys.readouterr().err


def test_against_needs_a_revision_it_can_read(monkeypatch):
    """--tables against times ./run against a git revision's: without one, or with one git does not know,
    a one-line error naming the flag (before anything is built)."""
    for argv, want in ((["--tables", "against"], "--tables against needs --against REV"),
                       (["--tables", "against", "--against", "no-such-rev"], "--against no-such-rev: git show"),
                       (["--against", "no-such-rev"], "--against no-such-rev: git show")):  # --against alone: that table
        monkeypatch.setattr(sys, "argv", ["bench_run.py", *argv])
        with pytest.raises(SystemExit) as e:
            bench_run.main()
        msg = str(e.value.code)
        assert msg.startswith("bench_run.py: error: ") and want in msg and "\n" not in msg, msg


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 511, 512, 600])
def test_windows_score_every_token_after_the_first_once(n):
    ids = list(range(n))
    ws = bench_quant.windows(ids, 256)
    assert all(len(w) <= 256 for w in ws)
    assert [t for w in ws for t in w[1:]] == ids[1:]
    assert all(w[0] == prev[-1] for prev, w in zip(ws, ws[1:]))


def test_nll_bits_is_torch_cross_entropy_in_bits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 50, generator=g, dtype=torch.float64) * 4
    ids = torch.randint(0, 50, (9,), generator=g)
    want = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum").item() / np.log(2)
    assert bench_quant.nll_bits(logits.numpy().astype(np.float32), ids.tolist()) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_bytes_per_token_counts_the_classifier_whole_and_one_embedding_row(tmp_path, tied):
    from gguf_file import gguf_export
    from model import ModelArgs, Transformer
    from tokenizer import Tokenizer
    args = ModelArgs(dim=64, n_layers=1, n_heads=2, vocab_size=512, max_seq_len=16, tie_embeddings=tied)
    torch.manual_seed(0)
    path = tmp_path / "m.gguf"
    gguf_export(Transformer(args), path, "q8_0", Tokenizer(SHARED / "models" / "tok512.model").vocab)
    tensors = llama_tools.gguf_tensors(path)
    assert ("output.weight" in tensors) != tied
    sizes = {name: size for name, (_, _, size) in tensors.items()}
    assert sizes["token_embd.weight"] >= 512 * 64 // 32 * 34  # q8_0: 34 bytes a block of 32
    assert os.path.getsize(path) > sum(sizes.values())
    embd = 0 if tied else sizes["token_embd.weight"] * (1 - 1 / 512)
    assert llama_tools.gguf_bytes_per_token(path) == (pytest.approx(sum(sizes.values()) - embd), "q8_0")


def test_q6_round_puts_every_weight_on_its_groups_63_levels_within_half_a_step():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    r = bench_quant.q6_round(w, 32)
    s = w.reshape(-1, 32).abs().amax(1, keepdim=True) / 31
    levels = r.reshape(-1, 32) / s
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 31 + 1e-4
    assert ((r - w).reshape(-1, 32).abs() <= s / 2 + 1e-6).all()
