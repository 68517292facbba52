"""A run's out_dir carries its vocabulary: copied alone into a fresh clone with no data/ folder, it
exports, samples, plots and resumes there; a checkpoint from before the vocabulary travelled with it
still exports, by the old lookup in data/, saying so."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow  # training runs and commands in processes of their own

TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--vocab_size=512", "--max_seq_len=32",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--log_interval=1", "--eval_interval=2",
        "--device=cpu"]


def run(cwd, script, *args, ok=True, env=None):
    r = subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env=env)
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
    """(data folder, out_dir) of a 4-iteration run on stories tokenized with tok512."""
    import tinystories
    d = tmp_path_factory.mktemp("data")
    shutil.copy(shared / "models" / "tok512.model", d / "tok512.model")
    tinystories.pretokenize(512, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], data_dir=d, workers=1)
    out = tmp_path_factory.mktemp("run") / "out"
    run(REPO, "train.py", *TINY, "--max_iters=4", f"--data_dir={d}", f"--out_dir={out}")
    return d, out


def fresh_clone(tmp_path):
    """The repository's tracked files in a new folder: no data/, no out/, nothing built."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    return clone


def test_out_dir_alone_exports_samples_plots_and_resumes(trained, shared, tmp_path):
    data, out = trained
    clone = fresh_clone(tmp_path)
    shutil.copytree(out, clone / "out")
    assert not (clone / "data").exists()
    # the shards, without their vocabulary beside them: a resumed run takes the vocabulary from out/
    shards = tmp_path / "shards"
    shutil.copytree(data / "tok512", shards / "tok512")
    env = {k: v for k, v in os.environ.items() if k != "STORYLLAMA_DATA"}
    r = run(clone, "export.py", "out/model.bin", "--checkpoint=out/ckpt.pt", env=env)
    assert (clone / "out" / "model.bin").is_file() and (clone / "out" / "tok512.bin").is_file(), r.stdout
    assert "note" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = run(clone, "sample.py", "--checkpoint=out/ckpt.pt", "--max_new_tokens=20", "--temperature=0",
            "--start=Once upon a time", env=env)
    assert r.stdout.strip() and "note" not in r.stderr, r.stderr
    # sample.py on the exported .bin finds the tokenizer export wrote beside it, and tells the same story
    r2 = run(clone, "sample.py", "--checkpoint=out/model.bin", "--max_new_tokens=20", "--temperature=0",
            "--start=Once upon a time", env=env)
    assert r2.stdout == r.stdout
    run(clone, "plot.py", "out", env=env)
    r = run(clone, "train.py", "--init_from=resume", "--max_iters=6", f"--data_dir={shards}", env=env)
    ckpt = torch.load(clone / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 6 and ckpt["tokenizer"] == "tok512.model", r.stdout
    # the vocabulary the model was made with, by its identity: another one under the same name is refused
    import tokenizer as T
    import vocab as V
    v = T.Tokenizer(shared / "models" / "tok512.model").vocab
    v.pieces[300], v.pieces[301] = v.pieces[301], v.pieces[300]
    V.write_bin(v, clone / "out" / "tok512.model")
    r = run(clone, "export.py", "out/other.bin", "--checkpoint=out/ckpt.pt", ok=False, env=env)
    assert "tok512.model" in r.stderr and "not the vocabulary" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_older_checkpoint_uses_data_and_says_so(trained, tmp_path):
    """A checkpoint without its vocabulary (written before it travelled with the run) still finds it
    in the data folder its config names, with a note saying which file it used."""
    data, out = trained
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    del ckpt["tokenizer"]
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / "ckpt.pt")
    r = run(tmp_path, str(REPO / "export.py"), old / "m.bin", f"--checkpoint={old / 'ckpt.pt'}")
    assert (old / "tok512.bin").is_file()
    assert f"note: {old / 'ckpt.pt'} holds no vocabulary (an older checkpoint): using {data / 'tok512.model'}" \
        in r.stdout + r.stderr, r.stdout + r.stderr
    r = run(tmp_path, str(REPO / "sample.py"), f"--checkpoint={old / 'ckpt.pt'}", "--max_new_tokens=5")
    assert "holds no vocabulary (an older checkpoint)" in r.stderr, r.stderr
    # a checkpoint naming its tokenizer by a path, not a file name beside it, is refused in one line
    ckpt["tokenizer"] = "../tok512.model"
    torch.save(ckpt, old / "bad.pt")
    r = run(tmp_path, str(REPO / "export.py"), old / "b.bin", f"--checkpoint={old / 'bad.pt'}", ok=False)
    assert r.stderr.strip() == (f"export.py: error: {old / 'bad.pt'}: its tokenizer '../tok512.model' is not a "
                                "file name beside it"), r.stderr
    # with its tokenizer named, nothing is looked up and nothing is said about it
    r = run(tmp_path, str(REPO / "sample.py"), f"--checkpoint={old / 'ckpt.pt'}", "--max_new_tokens=5",
            f"--tokenizer={data / 'tok512.model'}")
    assert "vocabulary" not in r.stderr, r.stderr
