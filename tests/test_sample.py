"""sample.py end to end on llama2.c's stories260K weights (saved as a train.py checkpoint), and its
strict checkpoint loading."""
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint
from test_model import load_v0_bin, tiny

REPO = Path(__file__).resolve().parent.parent
STORY_START = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


@pytest.fixture(scope="module")
def ckpt260K(shared, tmp_path_factory):
    """stories260K.bin as out/ckpt.pt, with its tokenizer where the config says: data_dir/tok512.model."""
    d = tmp_path_factory.mktemp("s260K")
    shutil.copy(shared / "models" / "tok512.model", d / "tok512.model")
    model = load_v0_bin(shared / "models" / "stories260K.bin")
    ckpt = {"model": model.state_dict(), "model_args": asdict(model.args), "iter_num": 0, "best_val_loss": 0.0,
            "config": {"vocab_source": "custom", "vocab_size": 512, "data_dir": str(d)}}
    torch.save(ckpt, d / "ckpt.pt")
    return d, model


def sample(*args, ok=True):
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), *args], capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


@pytest.mark.slow  # processes of their own
def test_greedy_story_stops_at_its_end(ckpt260K, shared):
    import sentencepiece
    d, model = ckpt260K
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))
    ids = model.generate(torch.tensor([[1]]), 511, temperature=0.0, stop_tokens=())[0].tolist()
    end = ids.index(1, 1)  # this story ends with the BOS of the next one, 346 tokens in
    r = sample(f"--checkpoint={d / 'ckpt.pt'}", "--temperature=0", "--max_new_tokens=500")
    assert r.stdout == sp.decode(ids[1:end]) + "\n"
    assert r.stdout.startswith(STORY_START) and "tok/s" in r.stderr
    # max_new_tokens cuts it short
    r = sample(f"--checkpoint={d / 'ckpt.pt'}", "--temperature=0", "--max_new_tokens=20")
    assert r.stdout == sp.decode(ids[1:21]) + "\n"


@pytest.mark.slow  # processes of their own
def test_prompt_file_samples_and_seed(ckpt260K, tmp_path):
    d, _ = ckpt260K
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time, there was a little dog")
    args = [f"--checkpoint={d / 'ckpt.pt'}", f"--start=FILE:{prompt}", "--num_samples=3", "--max_new_tokens=30",
            "--temperature=1.0", "--top_k=40", "--top_p=0.95"]
    a, b, c = sample(*args, "--seed=1"), sample(*args, "--seed=1"), sample(*args, "--seed=2")
    stories = a.stdout.split("---------------\n")
    assert len(stories) == 3 and all(s.startswith("Once upon a time, there was a little dog") for s in stories)
    assert a.stdout == b.stdout and a.stdout != c.stdout and len(set(stories)) == 3


@pytest.mark.slow  # processes of their own
def test_diverged_checkpoint_is_one_line(ckpt260K, tmp_path):
    """A checkpoint with a NaN weight: sample.py says which checkpoint and position, in one line, exit 1."""
    d, model = ckpt260K
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["norm.weight"][5] = float("nan")  # every logit at every position
    ckpt = torch.load(d / "ckpt.pt", weights_only=True)
    torch.save({**ckpt, "model": sd}, tmp_path / "nan.pt")
    for extra in ("--temperature=0", "--top_k=5"):
        r = sample(f"--checkpoint={tmp_path / 'nan.pt'}", extra, ok=False)
        errors = [line for line in r.stderr.splitlines() if not line.startswith("sample.py: note:")]
        assert r.returncode == 1 and errors == [f"sample.py: error: {tmp_path / 'nan.pt'}: the model produced NaN "
                                                "logits at position 0: is the checkpoint diverged?"], r.stderr


@pytest.mark.slow  # seconds: whole models saved and loaded
def test_strict_loading(tmp_path):
    m = tiny()
    good = {"model": m.state_dict(), "model_args": asdict(m.args), "config": {}}
    torch.save(good, tmp_path / "good.pt")
    loaded, _ = load_checkpoint(str(tmp_path / "good.pt"))
    x = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(loaded(x)[0], m.eval()(x)[0])
    compiled = {**good, "model": {"_orig_mod." + k: v for k, v in m.state_dict().items()}}
    torch.save(compiled, tmp_path / "compiled.pt")
    load_checkpoint(str(tmp_path / "compiled.pt"))
    cases = {
        "missing": ({**good, "model": {k: v for k, v in m.state_dict().items() if "layers.1.ffn_norm" not in k}},
                    "layers.1.ffn_norm.weight is missing"),
        "extra": ({**good, "model": {**m.state_dict(), "layers.9.attention.wq.weight": torch.zeros(1)}}, "Unexpected"),
        "shape": ({**good, "model_args": {**asdict(m.args), "n_kv_heads": 4}}, "do not match its model_args"),
        "args": ({**good, "model_args": {**asdict(m.args), "n_experts": 8}}, "model_args do not make a model"),
        "nonsense": ({"weights": 1}, "not a train.py checkpoint"),
        # shapes are compared before the model is built: model_args asking for 4 TB fail in one line
        "huge": ({**good, "model_args": {**asdict(m.args), "dim": 1 << 20}}, r"model_args make it \(64, 1048576\)"),
    }
    for name, (ckpt, words) in cases.items():
        torch.save(ckpt, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=words):
            load_checkpoint(str(tmp_path / f"{name}.pt"))
    r = sample(f"--checkpoint={tmp_path / 'missing.pt'}", ok=False)
    assert r.returncode == 1 and r.stdout == ""
    err = r.stderr.strip()
    assert "\n" not in err and "missing.pt" in err and "layers.1.ffn_norm.weight" in err, err


class _RunsCode:
    """Unpickling this object calls os.system: what a crafted ckpt.pt can do to weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow  # processes of their own
def test_every_reader_refuses_a_checkpoint_that_runs_code(tmp_path):
    m = tiny()
    marker = tmp_path / "pwned"
    ckpt = {"model": m.state_dict(), "model_args": asdict(m.args), "config": {}, "evil": _RunsCode(marker)}
    (tmp_path / "out").mkdir()
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    path = tmp_path / "out" / "ckpt.pt"
    for cmd in (["sample.py", f"--checkpoint={path}"], ["export.py", str(tmp_path / "m.bin"), f"--checkpoint={path}"],
                ["train.py", "--init_from=resume", f"--out_dir={tmp_path / 'out'}"]):
        r = subprocess.run([sys.executable, str(REPO / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        err = r.stderr.strip()
        assert r.returncode == 1 and "\n" not in err and "ckpt.pt" in err, (cmd, err)
        assert not marker.exists(), cmd
    assert not (tmp_path / "m.bin").exists()


def test_every_torch_load_is_weights_only():
    """Every torch.load in the product code unpickles with weights_only=True (a crafted file cannot run
    code through any of them, including ones added later)."""
    import ast
    calls = []
    for path in sorted(REPO.glob("*.py")) + sorted(REPO.glob("*/*.py")):
        if path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                calls.append((path.name, node.lineno, safe))
    assert calls and all(safe for *_, safe in calls), calls
