"""The fuzz harness (fuzz/): its seeds cover every format and run, and the fuzzer reports each kind
of finding (crash, hang, sanitizer report, a malformed error) on a toy target with planted bugs.
The real campaign runs in CI (.ci/run: make fuzz) and on demand (docs/testing.md)."""
import os
import subprocess
import sys
import time

import pytest

from conftest import PLAIN_BUILD, REPO, build

sys.path.insert(0, str(REPO / "fuzz"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    import make_seeds
    out = tmp_path_factory.mktemp("seeds")
    make_seeds.main(out)
    return out


def test_seeds_cover_every_format_and_run(seeds):
    """Every .bin version and weight type has a seed, and every seed model with the tokenizer of its
    vocabulary generates (so mutations start from files that reach the forward pass and the sampler)."""
    from binfile import read_header
    build(PLAIN_BUILD)
    headers = {p.name: read_header(p) for p in seeds.glob("model_*.bin")}
    kinds = {(h["version"], h["weight_type"]) for h in headers.values()}
    assert kinds >= {(0, "fp32"), (1, "fp32"), (2, "q8_0"), (3, "fp32"), (3, "bf16"), (3, "q8_0"), (3, "q4_q8"), (3, "q4")}, kinds
    toks = {int(p.stem.split("_")[1]): p for p in seeds.glob("tok_*.bin")}
    assert len(list(seeds.glob("tok_*.bin"))) >= 2
    deep = 0
    for name, h in headers.items():
        if h["vocab_size"] not in toks:
            continue
        r = subprocess.run([str(REPO / PLAIN_BUILD), seeds / name, "-z", toks[h["vocab_size"]], "-n", "16", "-s", "1"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)
        deep += 1
    assert deep >= len(headers) - 1


TOY = r"""
// A stand-in for run.c with planted bugs: fuzz.c must report each kind of finding.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int run_main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb");
    int head[3] = {0, 0, 0};
    if (f) { if (fread(head, 4, 3, f)) {} fclose(f); }
    for (int i = 2; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "-k") && !strcmp(argv[i + 1], "-3")) { for (volatile int spin = 1; spin;) {} }
        if (!strcmp(argv[i], "-p") && !strcmp(argv[i + 1], "2")) { fprintf(stderr, "run: error: one\nand two\n"); return 1; }
        if (!strcmp(argv[i], "-t") && strchr("xn-", argv[i + 1][0])) { volatile int big = 2147483647; return big + argc; }
    }
    if (head[2] <= 0 || head[2] > 1 << 20) { abort(); }  // a bad "dim" crashes (a signal; a bad read is ASan's)
    fprintf(stderr, "run: error: fine\n");
    return 1;
}
"""


@pytest.mark.slow  # processes of their own
@pytest.mark.ci  # sanitizer builds
def test_fuzzer_reports_every_kind_of_finding(seeds, tmp_path):
    (tmp_path / "toy.c").write_text(TOY)
    san = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, *san, "-o", tmp_path / "fuzz_toy", REPO / "fuzz" / "fuzz.c", tmp_path / "toy.c"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "findings"
    r = subprocess.run([tmp_path / "fuzz_toy", seeds, "15"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, FUZZ_OUT=str(out), FUZZ_SEED="1", FUZZ_TIMEOUT_MS="500"))
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[0]
    counts = dict(part.rsplit(" ", 1) for part in summary.split("findings ")[1].split(": ", 1)[1].split(" (")[0]
                  .split(", "))
    assert all(int(counts[k]) > 0 for k in ("crashes", "hangs", "sanitizer reports", "bad exits or stderr")), summary
    whys = {(d / "why.txt").read_text() for d in out.iterdir()}
    assert whys == {"crash", "hang", "sanitizer", "stderr"}, whys
    one = next(d for d in out.iterdir() if (d / "why.txt").read_text() == "crash")
    assert {p.name for p in one.iterdir()} == {"model.bin", "tok.bin", "stdin.txt", "why.txt", "stderr.txt", "repro.sh"}
    assert "run_sanitize\" model.bin" in (one / "repro.sh").read_text()


@pytest.mark.slow  # ~5-9 s: a forked worker per finding, and a CPU-second hang
def test_python_fuzzer_reports_each_kind_of_finding(shared, tmp_path, monkeypatch):
    """fuzz/pyfuzz.py on planted bugs: a traceback-worthy exception, a hang and an allocation past the
    memory bound each become a saved finding that names input and cause; a clean refusal does not."""
    import pyfuzz

    def reader(path):  # the planted bugs, picked by the mutated file's first byte
        b = path.read_bytes()[:1] or b"\0"
        kind = b[0] % 4
        if kind == 0:
            raise ValueError("a clean refusal")
        if kind == 1:
            raise KeyError("planted")
        if kind == 2:
            while True:  # a hang that spins (the limit counts CPU seconds; a sleep is caught by the clock)
                pass
        bytearray(4 << 30)  # far past --memory_mb

    monkeypatch.setitem(pyfuzz.FORMATS, "toy", ("tok_bin", {"": lambda rng, d: bytes([rng.randrange(256)]) + d},
                                                 [reader]))
    out = tmp_path / "findings"
    t0 = time.time()
    code = pyfuzz.main(["--format", "toy", "--runs", "12", "--timeout", "1", "--memory_mb", "256",
                        "--vocab", str(shared / "models" / "tok512.model"), "--out", str(out)])
    assert code == 1 and time.time() - t0 < 60
    whys = {p.name: (p / "why.txt").read_text() for p in out.iterdir()}
    causes = {w.split(":")[0].split(" ")[0] for w in whys.values()}
    assert causes == {"KeyError", "over", "MemoryError"}, whys
    # inputs are a pure function of (seed, format, n): --only n finds the same again
    n = sorted(int(name.split("-")[1]) for name in whys)[0]
    assert pyfuzz.main(["--format", "toy", "--only", str(n), "--timeout", "1", "--memory_mb", "256",
                        "--vocab", str(shared / "models" / "tok512.model"), "--out", str(tmp_path / "again")]) == 1
    assert (tmp_path / "again" / f"toy-{n}" / "why.txt").read_text().split(":")[0] == whys[f"toy-{n}"].split(":")[0]
