"""plot.py: training minutes and tokens rebuilt from metrics.jsonl (resumes included), the PNG, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import plot

REPO = Path(__file__).resolve().parent.parent


def write_run(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def log(it, ms, loss):
    return {"iter": it, "loss": loss, "lr": 1e-3, "ms_per_iter": ms, "tok_per_s": 1.0, "mfu": 0.1}


def ev(it, val, tokens_per_iter=1000):
    return {"iter": it, "tokens": it * tokens_per_iter, "train_loss": val, "val_loss": val, "val_bpb": val / 2}


def test_minutes_and_tokens_with_a_resume(tmp_path):
    lines = [ev(0, 6.0), log(10, 600, 5.0), log(20, 1200, 4.0), ev(20, 4.5), log(30, 600, 3.9),
             {"iter": 20, "event": "resume"}, log(30, 60, 3.5), ev(30, 3.6)]
    run = plot.load_run(write_run(tmp_path / "a", lines))
    # 10 iterations at 0.6 s, 10 at 1.2 s, then (after the resume replaced iteration 30) 10 at 0.06 s
    assert [(p[0], round(p[2], 6)) for p in run["train"]] == [(10, 0.1), (20, 0.3), (30, 0.31)]
    assert [p[3] for p in run["train"]] == [5.0, 4.0, 3.5]
    assert [(p[0], p[1], round(p[2], 6), p[4]) for p in run["val"]] == [(0, 0, 0.0, 3.0), (20, 20000, 0.3, 2.25),
                                                                         (30, 30000, 0.31, 1.8)]


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_png_for_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "a", [ev(0, 6.0), log(10, 500, 5.0), ev(10, 5.1)])
    b = write_run(tmp_path / "b", [ev(0, 6.0), log(10, 900, 4.0), ev(10, 4.2), log(20, 900, 3.0), ev(20, 3.3)])
    r = subprocess.run([sys.executable, str(REPO / "plot.py"), str(a), str(b), "-o", str(tmp_path / "p.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert subprocess.run([sys.executable, str(REPO / "plot.py"), str(a)], capture_output=True).returncode == 0
    assert (a / "plot.png").is_file() and not list(tmp_path.rglob("*.tmp.png"))


def test_errors_are_one_line(tmp_path):
    write_run(tmp_path / "junk", [{"no": "iter"}])
    write_run(tmp_path / "empty", [])
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['plot.py', sys.argv[1]]; "
            "import plot; sys.exit(plot.main())")
    for args, words in (([str(tmp_path / "missing")], "missing/metrics.jsonl"),
                        ([str(tmp_path / "junk")], "line 1 is not a train.py metrics record"),
                        ([str(tmp_path / "empty")], "no log or evaluation lines yet")):
        r = subprocess.run([sys.executable, str(REPO / "plot.py"), *args], capture_output=True, text=True)
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    write_run(tmp_path / "ok", [ev(0, 6.0), log(10, 500, 5.0)])
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ok")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip() == "plot.py: error: plot.py needs matplotlib: pip install matplotlib"


def test_training_clock_is_used_when_recorded(tmp_path):
    lines = [{**ev(0, 6.0), "train_s": 0.0}, {**log(10, 600, 5.0), "train_s": 30.0}, {**ev(10, 5.0), "train_s": 30.0}]
    run = plot.load_run(write_run(tmp_path / "c", lines))
    assert run["train"][0][2] == 0.5 and run["val"][1][2] == 0.5  # 30 s of training, not 10 x 0.6 s
