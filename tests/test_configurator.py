"""configurator.py: typed --key=value overrides, config files, and one-line errors naming the culprit."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from configurator import ConfigError, configure

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = {"learning_rate": 5e-4, "max_iters": 100, "compile": True, "device": "cpu", "n_kv_heads": None,
            "min_lr": None, "dropout": 0.0}
NONE_TYPES = {"n_kv_heads": int, "min_lr": float}


def cfg(*argv):
    return configure(DEFAULTS, list(argv), NONE_TYPES)


def test_typed_overrides():
    c = cfg("--learning_rate=1e-3", "--max_iters=2_000", "--compile=False", "--device=cuda:1", "--dropout=0")
    assert c == {**DEFAULTS, "learning_rate": 1e-3, "max_iters": 2000, "compile": False, "device": "cuda:1",
                 "dropout": 0.0}
    assert type(c["dropout"]) is float  # an int where a float is expected becomes a float
    assert cfg("--max_iters=1e4")["max_iters"] == 10000 and type(cfg("--max_iters=1e4")["max_iters"]) is int
    assert cfg("--compile=true")["compile"] is True and cfg("--compile=0")["compile"] is False
    assert cfg("--compile")["compile"] is True  # a bare flag switches a boolean on
    assert cfg("--n_kv_heads=4")["n_kv_heads"] == 4 and cfg("--n_kv_heads=None")["n_kv_heads"] is None
    assert cfg("--min_lr=0")["min_lr"] == 0.0 and type(cfg("--min_lr=0")["min_lr"]) is float
    assert cfg("--device='cpu'")["device"] == "cpu"
    assert cfg("--max_iters=5", "--max_iters=7")["max_iters"] == 7  # later arguments win
    assert DEFAULTS["max_iters"] == 100  # the defaults are not modified


@pytest.mark.parametrize("arg, words", [
    ("--learnin_rate=1", ["--learnin_rate", "closest: --learning_rate"]),
    ("--max_iters=2.5", ["max_iters", "int", "2.5"]),
    ("--max_iters=abc", ["max_iters", "int"]),
    ("--compile=yes", ["compile", "True or False"]),
    ("--learning_rate=fast", ["learning_rate", "float"]),
    ("--dropout=True", ["dropout", "float"]),
    ("--n_kv_heads=2.5", ["n_kv_heads", "int"]),
    ("--n_kv_heads=four", ["n_kv_heads", "int", "four"]),
    ("--max_iters", ["--max_iters", "needs a value"]),
    ("nonexistent.py", ["nonexistent.py", "not found"]),
])
def test_errors_name_the_argument(arg, words):
    with pytest.raises(ConfigError) as e:
        cfg(arg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_config_file(tmp_path):
    f = tmp_path / "preset.py"
    f.write_text("import math\n_helper = 3\nlearning_rate = 1e-3 * math.sqrt(4)\nmax_iters = 50\n"
                 "n_kv_heads = 2\ndef f():\n    return 1\n")
    c = cfg(str(f), "--max_iters=60")
    assert c["learning_rate"] == pytest.approx(2e-3) and c["max_iters"] == 60 and c["n_kv_heads"] == 2
    assert cfg("--max_iters=60", str(f))["max_iters"] == 50  # left to right
    bad = tmp_path / "bad.py"
    bad.write_text("learnig_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"bad.py: unknown setting 'learnig_rate'; closest: --learning_rate"):
        cfg(str(bad))
    bad.write_text("max_iters = 'many'\n")
    with pytest.raises(ConfigError, match=r"bad.py: max_iters expects int"):
        cfg(str(bad))
    bad.write_text("max_iters = (\n")
    with pytest.raises(ConfigError, match=r"bad.py: SyntaxError"):
        cfg(str(bad))


def run_train(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # processes of their own
def test_train_cli_errors_and_presets(tmp_path):
    r = run_train("--learnig_rate=1e-3", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "--learnig_rate" in r.stderr and "--learning_rate" in r.stderr
    r = run_train("--max_iters=ten", cwd=tmp_path)
    assert r.returncode == 2 and "max_iters expects int" in r.stderr
    r = run_train("--init_from=finetune", cwd=tmp_path)
    assert r.returncode == 2 and "init_from" in r.stderr
    # every preset is valid against train.py's own settings (read from --help)
    r = run_train("--help", cwd=tmp_path)
    assert r.returncode == 0
    defaults, notes = {}, {}
    for line in r.stdout.splitlines():
        if line.startswith("  --"):
            flag, _, notes[flag] = line.strip().partition("  ")
            key, _, value = flag[2:].partition("=")
            defaults[key] = ast.literal_eval(value)
    assert all(n.strip() for n in notes.values()), [f for f, n in notes.items() if not n.strip()]  # each says what
    assert {"lr_decay_iters", "min_lr", "gradient_accumulation_steps", "n_kv_heads", "dropout"} <= set(defaults)
    assert defaults["lr_decay_iters"] is None and defaults["min_lr"] is None  # derived unless set
    for preset in sorted((REPO / "config").glob("*.py")):
        c = configure(defaults, [str(preset)], {"n_kv_heads": int, "lr_decay_iters": int, "min_lr": float,
                                                "data_dir": str})
        assert c["dim"] % c["n_heads"] == 0, preset.name


@pytest.mark.parametrize("argv, words", [
    (["pretokenize", "--vocab_sise=512"], ["unrecognized arguments: --vocab_sise=512", "closest: --vocab_size"]),
    ([], ["required: command", "one of: download,", "pretokenize"]),
    (["pretokenize", "--dataset=v3"], ["tinystories.py pretokenize: error:", "invalid choice: 'v3'"]),
    (["train_vocab"], ["tinystories.py train_vocab: error:", "required: --vocab_size"]),
])
def test_argparse_commands_answer_in_one_line(argv, words):
    """tinystories.py (argparse with subcommands, through configurator.one_line_errors): a mistake is one
    line on stderr, status 2, naming the closest flag to a misspelt one; no usage dump."""
    r = subprocess.run([sys.executable, str(REPO / "tinystories.py"), *argv], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


@pytest.mark.parametrize("module,argv,closest", [
    ("export", ["out.bin", "--checkpoint", "ckpt.pt", "--dtyp", "q8_0"], "--dtype"),
    ("tokenizer", ["--tokenizer", "tok.model"], "--tokenizer-model"),
    ("tinystories", ["pretokenize", "--vocab=512"], "--vocab_size"),
    ("tinystories", ["train_vocab", "--vocab-size=512"], "--vocab_size"),
])
def test_abbreviated_flags_are_refused(module, argv, closest, capsys):
    """argparse would take a prefix of a flag as the flag; like train.py and sample.py, every command names
    the flag it meant instead of guessing."""
    main = __import__(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"closest: {closest}" in err and len(err.strip().splitlines()) == 1, err
