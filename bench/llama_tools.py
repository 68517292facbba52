"""Get llama.cpp's own tools for the benchmarks (bench/bench_run.py, bench/bench_quant.py): the source CI
already compiles (vendor/llama.cpp inside llama-cpp-python's sdist, the version requirements-llama.txt
pins), built once with cmake for this CPU and kept outside the clone, under a name of its version and
build flags, as .ci/run keeps its wheel.

    python bench/llama_tools.py            download the sdist (pip), build the tools (minutes on 2 cores,
                                         under nice) and print the folder that holds them
    python bench/llama_tools.py --where    print that folder if the tools are built there, else how to build them

The benchmarks also take --llama-cpp DIR: a user's own build (a folder holding llama-bench etc., or a
llama.cpp checkout with its build/bin/).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gguf_meta import TYPE_NAMES, read_gguf  # noqa: E402

# the tools the benchmarks run: decode/prefill speed, the k-quant and Q4_0 files, a whole process
TOOLS = ("llama-bench", "llama-quantize", "llama-completion")
# built for this CPU (as run's `make run` is), OpenMP threads as llama.cpp defaults, static (the
# tools stand alone in the cache), nothing that needs a network library
FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF")


def version():
    """The llama-cpp-python version requirements-llama.txt pins (its vendor/llama.cpp is the source)."""
    for line in (REPO / "requirements-llama.txt").read_text().splitlines():
        if line.startswith("llama-cpp-python=="):
            return line.split("==", 1)[1].strip()
    sys.exit("llama_tools.py: requirements-llama.txt has no llama-cpp-python==VERSION line")


def cache_dir():
    """~/.cache/storyllama/llama.cpp-VERSION-HASH (HASH: the build flags'), or under $XDG_CACHE_HOME."""
    key = hashlib.sha256(" ".join(FLAGS).encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "storyllama" / f"llama.cpp-{version()}-{key}"


def tools_in(folder):
    """{tool name: path} when folder (or its bin/, build/bin/) holds every one of TOOLS, else None."""
    for d in (Path(folder), Path(folder) / "bin", Path(folder) / "build" / "bin"):
        paths = {t: d / t for t in TOOLS}
        if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
            return paths
    return None


def missing_message(given=None):
    """The one line the benchmarks print when they find no llama.cpp."""
    where = (f"{given}: no such folder" if given and not Path(given).is_dir()
             else f"{given} does not hold {', '.join(TOOLS)}" if given
             else f"llama.cpp's tools are not built in {cache_dir()}")
    return (f"{where}: build them with `python bench/llama_tools.py` (llama-cpp-python {version()}'s llama.cpp, "
            f"about 10 minutes on 2 cores) or pass --llama-cpp DIR (your own build's bin/)")


def find(given=None):
    """The tools of --llama-cpp DIR if given, else of the cache; None when not there."""
    return tools_in(given) if given else tools_in(cache_dir() / "build" / "bin")


def build():
    """Download the pinned sdist, configure and build TOOLS in the cache folder; returns {tool: path}."""
    dest = cache_dir()
    src = dest / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"downloading llama-cpp-python {version()}'s source (pip) ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version()}", "-d", tmp], check=True)
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp, filter="data")
            vendored = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
            dest.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(str(vendored), str(src))
    out = dest / "build"
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(out), *FLAGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*nice, "cmake", "--build", str(out), "--target", *TOOLS, "-j", str(os.cpu_count() or 1)],
                   check=True)
    found = tools_in(out / "bin")
    if not found:
        sys.exit(f"llama_tools.py: the build finished but {out / 'bin'} lacks one of {', '.join(TOOLS)}")
    return found


def bench_json(text):
    """llama-bench's -o json output -> [(n_prompt, n_gen, n_threads, tok/s of each repetition)]."""
    try:
        tests = json.loads(text)
        if not isinstance(tests, list) or not tests:
            raise ValueError("expected a list of tests")
        return [(t["n_prompt"], t["n_gen"], t["n_threads"], [float(x) for x in t["samples_ts"]]) for t in tests]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"llama-bench's json output is not what bench expects ({e}): {text[:200]!r}") from None


def bench(tools, gguf, n_prompt, n_gen, threads, env=None):
    """One llama-bench process, one repetition of each: (prompt tok/s over n_prompt tokens, decode tok/s of
    n_gen tokens from an empty context); either is None when its count is 0."""
    cmd = [str(tools["llama-bench"]), "-m", str(gguf), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
           "-r", "1", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"llama-bench failed on {gguf}: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    speeds = {(p > 0, g > 0): ts[0] for p, g, _, ts in bench_json(r.stdout)}
    return speeds.get((True, False)), speeds.get((False, True))


def quantize(tools, f32_gguf, out, qtype):
    """llama-quantize F32 -> qtype (Q8_0, Q4_0, Q4_K_M, ...), its default choices for each tensor (the
    k-quants fall back to other types for rows that are not a multiple of 256)."""
    if Path(out).exists() and Path(out).stat().st_mtime >= Path(f32_gguf).stat().st_mtime:
        return out
    r = subprocess.run([str(tools["llama-quantize"]), str(f32_gguf), str(out), qtype], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llama-quantize {f32_gguf} {qtype} failed:\n{r.stderr[-2000:]}")
    return out


def completion(tools, gguf, prompt, n, threads, ctx, env=None):
    """A whole llama-completion process, as a user runs it: greedy after prompt for n tokens, its default
    warm-up included. Returns (seconds, the text it printed: the prompt and what follows). (A prompt,
    because an empty one is BOS alone, which ends the story at once where BOS is also the end-of-story
    token, as in stories260K's vocabulary.)"""
    cmd = [str(tools["llama-completion"]), "-m", str(gguf), "-p", prompt, "-n", str(n), "--temp", "0", "-t",
           str(threads), "-c", str(ctx), "-no-cnv", "--simple-io"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"llama-completion failed on {gguf}: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return seconds, r.stdout


def gguf_tensors(path):
    """{tensor name: (type name, ne, bytes it takes in the file, its padding included)} of a GGUF."""
    _, tensors, buf = read_gguf(path)
    ends = sorted(off for _, _, off in tensors.values()) + [len(buf)]
    buf.close()
    return {name: (TYPE_NAMES[t], ne, ends[ends.index(off) + 1] - off) for name, (t, ne, off) in tensors.items()}


def gguf_bytes_per_token(path):
    """(bytes of weights one token reads from a GGUF, the classifier's tensor type): every tensor but the
    token embedding, of which one row (all of it when it is also the classifier: no output.weight)."""
    tensors = gguf_tensors(path)
    total = sum(size for _, _, size in tensors.values())
    if "output.weight" in tensors:
        _, ne, size = tensors["token_embd.weight"]
        total -= size * (1 - 1 / ne[1])
    return total, tensors.get("output.weight", tensors["token_embd.weight"])[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--where", action="store_true", help="only say where the tools are (or how to build them)")
    a = p.parse_args()
    found = find()
    if a.where and not found:
        sys.exit(missing_message())
    if not found:
        if not shutil.which("cmake"):
            sys.exit("llama_tools.py: cmake not found; it builds llama.cpp (apt-get or pip install cmake)")
        found = build()
    print(found["llama-bench"].parent)


if __name__ == "__main__":
    main()
