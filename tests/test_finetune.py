"""Fine-tuning (train.py --init_from=PATH, pretrained.py): a tiny model written as a train.py checkpoint, a
.bin (fp32 and q8_0), a Hugging Face directory and a GGUF, and Karpathy's stories260K.bin, each fine-tuned
on V2 stories tokenized with tok512.model. It starts from the file's weights (its loss at iteration 0 is the
file's model's), keeps the file's shape (a setting that disagrees is refused) and vocabulary (shards and
tokenizers of another are refused), freezes the embeddings when asked, resumes bitwise exactly, and the
result exports to .bin (./run tells sample.py's greedy story), HF and GGUF (read back equal)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import dataloader
import tokenizer as T
import vocab as V
from binfile import load_bin, model_export
from checkpoint import load_checkpoint
from conftest import REPO
from gguf_file import gguf_export, gguf_import
from hf import hf_export, hf_import
from model import ModelArgs, Transformer
from pretrained import load_pretrained, pick_tokenizer

SHAPE = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
# a short run: 4-token batches of 32-token windows, evaluated at 0 and at the end
RUN = ["--batch_size=4", "--max_seq_len=32", "--eval_iters=2", "--eval_interval=4", "--warmup_iters=1",
       "--log_interval=1", "--learning_rate=3e-3", "--device=cpu"]


def script(name, *args, ok=True):
    """One of the repo's scripts in a process of its own (one thread: the models are tiny; the same count
    keeps runs bitwise comparable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, str(REPO / name), *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=env)
    assert (r.returncode == 0) == ok, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def train(*args, ok=True):
    return script("train.py", *args, ok=ok)


def one_error_line(r, code):
    err = r.stderr.strip()
    assert r.returncode == code and "\n" not in err and "Traceback" not in err, r.stdout + r.stderr
    return err


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tok(shared):
    return T.Tokenizer(shared / "models" / "tok512.model")


@pytest.fixture(scope="module")
def data(shared, sources, tmp_path_factory):
    """A data folder holding V2 stories pretokenized as a user would for each model: pretokenize
    --tokenizer=THE_MODEL'S writes data/tok512/ (tok512.model, also what a .bin with tok512.bin beside it
    reads), data/hfmodel/ (the HF directory's tokenizer) and data/model/ (model.gguf's)."""
    import tinystories
    d = tmp_path_factory.mktemp("data")
    shutil.copy(shared / "models" / "tok512.model", d / "tok512.model")  # for the run from scratch (ckpt_source)
    for t in (shared / "models" / "tok512.model", sources[1]["hf"], sources[1]["gguf"]):
        assert tinystories.main(["pretokenize", f"--tokenizer={t}", f"--data_dir={d}", "--workers=1", "--input",
                                 str(shared / "tinystories" / "TinyStoriesV2-GPT4-train.head-10k-lines.txt")]) == 0
    return d


@pytest.fixture(scope="module")
def sources(tok, tmp_path_factory):
    """(model, {kind: path}): one tiny random model as a .bin (fp32, q8_0) with its tokenizer beside it, a
    Hugging Face directory and a GGUF, each holding the tok512 vocabulary."""
    d = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**SHAPE)).eval()
    paths = {"bin": d / "fp32" / "model.bin", "q8_0": d / "q8" / "model.bin", "hf": d / "hfmodel",
             "gguf": d / "model.gguf"}
    for kind in ("bin", "q8_0"):
        paths[kind].parent.mkdir()
        model_export(model, paths[kind], 3, "fp32" if kind == "bin" else "q8_0", 32, tok.identity)
        V.write_bin(tok.vocab, T.beside(paths[kind], 512)[0])
    hf_export(model, paths["hf"], tok.vocab)
    gguf_export(model, paths["gguf"], "fp32", tok.vocab)
    return model, paths


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -----------------------------------------------------------------------------
# quick: pretrained.py on every kind of file, the tokenizer checks, a shape setting refused


def test_every_kind_loads_with_its_tokenizer(sources, tok):
    model, paths = sources
    for kind, path in paths.items():
        found = load_pretrained(path)
        assert found.kind == {"q8_0": "bin"}.get(kind, kind)
        assert found.identity == tok.identity and T.Tokenizer(found.tokenizer).identity == tok.identity, kind
        if kind == "q8_0":  # dequantised (within a step of each group's scale, max|w| / 127), and said so
            for k, w in model.state_dict().items():
                assert (found.model.state_dict()[k] - w).abs().max() <= w.abs().max() / 127, k
            assert not same_weights(found.model, model) and "q8_0 weights: dequantised to fp32" in found.notes[0]
        else:
            assert same_weights(found.model, model) and not found.notes, kind
        assert pick_tokenizer(found, "", path, note=pytest.fail).identity == tok.identity


def test_tokenizer_checks(sources, tok, shared, tmp_path):
    model, paths = sources
    notes = []
    stories = shared / "models" / "stories260K.bin"
    found = load_pretrained(stories)  # llama2.c's v0 file: no identity, its llama2.c tokenizer beside it
    assert found.identity is None and found.tokenizer.name == "tok512.bin"
    assert pick_tokenizer(found, "", stories, notes.append).identity is None  # shards: by the file's sha256
    assert notes.pop() == (f"note: {found.tokenizer} is a llama2.c tokenizer file, which carries no vocabulary "
                           f"identity: the shards must be made with this very file (pretokenize --tokenizer="
                           f"{found.tokenizer}; checked by its sha256), or pass --tokenizer=PATH of the .model it "
                           "came from") and not notes
    assert pick_tokenizer(found, shared / "models" / "tok512.model", stories, notes.append).identity == tok.identity
    assert notes == [f"note: {stories} carries no vocabulary identity: checked that the 512 token texts of "
                     f"{shared / 'models' / 'tok512.model'} are those of {found.tokenizer} beside it"]
    # another vocabulary of the same size: two tokens swapped
    other = T.Tokenizer(shared / "models" / "tok512.model").vocab
    other.pieces[300], other.pieces[301] = other.pieces[301], other.pieces[300]
    V.write_bin(other, tmp_path / "other.bin")
    for path, f in ((stories, found), (paths["gguf"], load_pretrained(paths["gguf"]))):
        with pytest.raises(ValueError, match="other.bin is not the"):
            pick_tokenizer(f, tmp_path / "other.bin", path, notes.append)
    with pytest.raises(ValueError, match="tokenizer .*tokenizer.model has 32000 tokens, .* has vocab_size=512"):
        pick_tokenizer(found, shared / "models" / "tokenizer.model", stories, notes.append)
    # a model with no tokenizer anywhere: one line saying to pass --tokenizer
    lone = tmp_path / "lone" / "model.bin"
    lone.parent.mkdir()
    shutil.copy(paths["bin"], lone)
    with pytest.raises(ValueError, match=r"no tokenizer found for .*model.bin \(looked for .*tok512.bin and .*: pass "
                       "--tokenizer=PATH"):
        pick_tokenizer(load_pretrained(lone), "", lone, notes.append)


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_a_setting_that_changes_the_shape_is_refused(sources, tmp_path):
    path = sources[1]["bin"]
    r = train(f"--init_from={path}", "--dim=64", f"--out_dir={tmp_path / 'out'}", ok=False)
    assert one_error_line(r, 2) == \
        f"train.py: error: --dim=64 but {path} has dim=32: a fine-tune keeps the model's shape"
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# slow: fine-tuning runs


@pytest.mark.slow
def test_a_config_file_setting_is_refused_too(sources, tmp_path):
    (tmp_path / "cfg.py").write_text("n_layers = 3\ntie_embeddings = False\n")
    path = sources[1]["hf"]
    r = train(tmp_path / "cfg.py", f"--init_from={path}", ok=False)
    assert one_error_line(r, 2) == f"train.py: error: --n_layers=3 but {path} has n_layers=2: a fine-tune keeps the " \
                                   "model's shape"
    r = train(f"--init_from={path}", "--multiple_of=64", ok=False)
    assert "--multiple_of=64 makes another hidden_dim than" in one_error_line(r, 2)
    r = train(f"--init_from={tmp_path / 'nothing.bin'}", ok=False)
    assert "--init_from=" in one_error_line(r, 2) and "no such file or directory" in r.stderr
    r = train("--tokenizer=tok512.model", ok=False)
    assert "--tokenizer is for fine-tuning (--init_from=PATH)" in one_error_line(r, 2)


def eval_loss(model, data, vocab_source, split="val", seed=1337):
    """The mean loss train.py's evaluation computes (RUN's 2 batches of 4 x 32 at seed + 1), here in-process."""
    shards = dataloader.split_shards(split, 512, vocab_source, data)
    batches = dataloader.Batches(shards, 4, 32, seed + 1)
    with torch.no_grad():
        return torch.tensor([model.eval()(*batches[k])[1].item() for k in range(2)]).mean().item()


@pytest.fixture(scope="module")
def ckpt_source(data, tmp_path_factory):
    """A train.py checkpoint: 2 iterations of the tiny shape from scratch."""
    out = tmp_path_factory.mktemp("scratch") / "out"
    train(*RUN, *[f"--{k}={v}" for k, v in SHAPE.items()], "--max_iters=2",
          f"--data_dir={data}", f"--out_dir={out}")
    return out / "ckpt.pt"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["checkpoint", "bin", "q8_0", "hf", "gguf"])
def test_fine_tune_from_every_kind(kind, sources, ckpt_source, data, tok, run_bin, tmp_path):
    """Iteration 0's val loss is the file's model's; the run trains (fresh optimizer, iteration 0 on), and its
    checkpoint records where it started and carries the vocabulary, which sample.py then uses without a note
    and export.py writes beside the .bin, where ./run finds it and tells sample.py's greedy story."""
    path = ckpt_source if kind == "checkpoint" else sources[1][kind]
    before = load_pretrained(path).model
    out = tmp_path / "out"
    r = train(*RUN, f"--init_from={path}", "--max_iters=4", f"--data_dir={data}", f"--out_dir={out}")
    assert f"fine-tuning {path} ({'bin' if kind == 'q8_0' else kind})" in r.stdout
    assert ("q8_0 weights: dequantised to fp32" in r.stdout) == (kind == "q8_0"), r.stdout
    evals = [m for m in metrics(out) if "val_loss" in m]
    assert [m["iter"] for m in evals] == [0, 4]
    name = {"hf": "hfmodel", "gguf": "model"}.get(kind, "tok512")  # where pretokenize --tokenizer=its put the shards
    assert evals[0]["val_loss"] == pytest.approx(eval_loss(before, data, name), rel=1e-5)
    assert evals[1]["val_loss"] < evals[0]["val_loss"]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["init_from"] == str(path) and ckpt["iter_num"] == 4
    assert ckpt["vocab_identity"] == tok.identity.hex() and ckpt["config"]["vocab_source"] == name
    assert all(s["step"] == 4 for s in ckpt["optimizer"][0]["state"].values())  # a fresh optimizer
    assert ckpt["model_args"]["max_seq_len"] == 64  # trained on 32-token windows, the model keeps its context
    # the vocabulary travels with the run: a .model or run.c file as it is, a GGUF's or HF's in run.c's file
    assert ckpt["tokenizer"] == ("tok512.model" if kind == "checkpoint" else "tok512.bin")
    assert T.Tokenizer(out / ckpt["tokenizer"]).identity == tok.identity
    # sample.py finds it (no note: the vocabulary is known); exported, ./run finds it too and tells the same story
    story = script("sample.py", f"--checkpoint={out / 'ckpt.pt'}", "--temperature=0", "--max_new_tokens=30")
    assert "note" not in story.stderr, story.stderr
    if kind not in ("hf", "gguf"):  # the others came in files run.c reads: their export is test_export's
        return
    script("export.py", out / "model.bin", f"--checkpoint={out / 'ckpt.pt'}")
    c = subprocess.run([run_bin, out / "model.bin", "-t", "0", "-n", "30"], capture_output=True, text=True, timeout=60)
    assert c.returncode == 0 and c.stdout.strip() == story.stdout.strip(), c.stdout + c.stderr


@pytest.mark.slow
def test_wrong_vocabulary_is_refused(sources, data, shared, tmp_path):
    """An HF model whose vocabulary has two tokens swapped: the tok512 shards are refused by identity, and
    by default its own shard folder (named after the directory) is looked for."""
    model = sources[0]
    other = T.Tokenizer(shared / "models" / "tok512.model").vocab
    other.pieces[300], other.pieces[301] = other.pieces[301], other.pieces[300]
    hf_export(model, tmp_path / "swapped", other)
    r = train(*RUN, f"--init_from={tmp_path / 'swapped'}", "--vocab_source=tok512", f"--data_dir={data}",
              f"--out_dir={tmp_path / 'out'}", ok=False)
    assert "made with another tokenizer" in one_error_line(r, 1), r.stderr
    # the command that makes shards with the model's tokenizer, naming the story files the shards came from
    inputs = json.loads((data / "tok512" / "manifest.json").read_text())["signature"]["inputs"]
    assert f"pretokenize --tokenizer={tmp_path / 'swapped'} --data_dir={data} --input {inputs[0][0]}" in r.stderr
    r = train(*RUN, f"--init_from={tmp_path / 'swapped'}", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}",
              ok=False)
    assert f"no train shards in {data / 'swapped'}" in one_error_line(r, 1), r.stderr
    # its tokenizer given for a model of another vocabulary: refused by identity before any data is read
    r = train(*RUN, f"--init_from={sources[1]['gguf']}", f"--tokenizer={tmp_path / 'swapped'}", ok=False)
    assert "is not the tokenizer of" in one_error_line(r, 1)


@pytest.mark.slow
def test_freeze_embeddings_keeps_them_bitwise(sources, data, tmp_path):
    model, paths = sources
    r = train(*RUN, f"--init_from={paths['gguf']}", "--freeze_embeddings", "--max_iters=4", f"--data_dir={data}",
              f"--out_dir={tmp_path / 'out'}")
    assert "the token embedding is not trained, nor the classifier, which shares its weights" in r.stdout
    tuned, _ = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert torch.equal(tuned.tok_embeddings.weight, model.tok_embeddings.weight)
    assert tuned.output.weight is tuned.tok_embeddings.weight
    assert not torch.equal(tuned.layers[0].attention.wq.weight, model.layers[0].attention.wq.weight)


@pytest.mark.slow
def test_fine_tune_resumes_bitwise(sources, data, tmp_path):
    """8 iterations straight == 4 + resume 4 (the schedule set for 8 in both), with dropout (the RNG); the same
    command again then has nothing to do, and another model into the same out_dir is refused."""
    common = [*RUN, f"--init_from={sources[1]['bin']}", "--dropout=0.1", "--lr_decay_iters=8",
              "--always_save_checkpoint=True", f"--data_dir={data}"]
    train(*common, "--max_iters=8", f"--out_dir={tmp_path / 'a'}")
    train(*common, "--max_iters=4", f"--out_dir={tmp_path / 'b'}")
    r = train("--init_from=resume", "--max_iters=8", f"--out_dir={tmp_path / 'b'}")
    assert "resumed from iteration 4" in r.stdout and "settings changed: max_iters 4 -> 8" in r.stdout
    a, b = (torch.load(tmp_path / x / "ckpt.pt", weights_only=True) for x in "ab")
    assert a["iter_num"] == b["iter_num"] == 8 and b["init_from"] == str(sources[1]["bin"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"][0]["state"].values(), b["optimizer"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [m["loss"] for m in metrics(tmp_path / "a") if "loss" in m] == \
        [m["loss"] for m in metrics(tmp_path / "b") if "loss" in m]
    r = train(*common, "--max_iters=8", f"--out_dir={tmp_path / 'a'}")
    assert r.stdout.startswith("nothing to do:"), r.stdout
    r = train(*common, "--max_iters=8", f"--init_from={sources[1]['gguf']}", f"--out_dir={tmp_path / 'a'}", ok=False)
    assert "holds the checkpoint of an earlier run" in one_error_line(r, 2)


@pytest.mark.slow
def test_stories260K_fine_tuned_exports_and_runs(shared, data, run_bin, tmp_path):
    """Karpathy's stories260K.bin with tok512.model, fine-tuned a few iterations: exported to .bin, ./run tells
    the greedy story sample.py tells from the checkpoint; exported to HF and GGUF, it reads back equal."""
    out = tmp_path / "out"
    r = train(*RUN, f"--init_from={shared / 'models' / 'stories260K.bin'}", "--learning_rate=3e-4", "--max_iters=4",
              f"--tokenizer={shared / 'models' / 'tok512.model'}", f"--data_dir={data}", f"--out_dir={out}")
    assert "checked that the 512 token texts of" in r.stdout
    tuned, _ = load_checkpoint(out / "ckpt.pt")
    assert not same_weights(tuned, load_bin(shared / "models" / "stories260K.bin"))
    script("export.py", out / "model.bin", f"--checkpoint={out / 'ckpt.pt'}", f"--to_hf={out / 'hf'}",
           f"--to_gguf={out / 'model.gguf'}")
    assert same_weights(hf_import(out / "hf"), tuned) and same_weights(gguf_import(out / "model.gguf"), tuned)
    story = script("sample.py", f"--checkpoint={out / 'ckpt.pt'}", "--temperature=0", "--max_new_tokens=200")
    c = subprocess.run([run_bin, out / "model.bin", "-t", "0", "-n", "200"], capture_output=True, text=True, timeout=60)
    assert c.returncode == 0 and c.stdout.strip() == story.stdout.strip(), c.stdout + c.stderr
    assert story.stdout.startswith("Once upon a time")


@pytest.mark.slow
def test_stories260K_with_its_llama2c_tokenizer(shared, data, tmp_path):
    """No --tokenizer: tok512.bin beside stories260K.bin, which has no identity. Shards made with tok512.model
    are refused (by sha256: they may not be the same vocabulary); shards made with tok512.bin itself train,
    and the fine-tuned model samples without a note (neither it nor its tokenizer claims an identity)."""
    import tinystories
    stories = shared / "models" / "stories260K.bin"
    r = train(*RUN, f"--init_from={stories}", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", ok=False)
    assert "made with another tokenizer" in r.stderr and "llama2.c tokenizer file" in r.stdout, r.stdout + r.stderr
    legacy = tmp_path / "data"
    assert tinystories.main(["pretokenize", f"--tokenizer={shared / 'models' / 'tok512.bin'}", f"--data_dir={legacy}",
                             "--workers=1", "--input",
                             str(shared / "tinystories" / "TinyStoriesV2-GPT4-train.head-10k-lines.txt")]) == 0
    train(*RUN, f"--init_from={stories}", "--max_iters=2", f"--data_dir={legacy}", f"--out_dir={tmp_path / 'out'}")
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"] == "tok512.bin" and ckpt["vocab_identity"] is None
    r = script("sample.py", f"--checkpoint={tmp_path / 'out' / 'ckpt.pt'}", "--temperature=0", "--max_new_tokens=20")
    assert r.stdout.startswith("Once upon a time") and "note" not in r.stderr, r.stderr
