"""run.c as WebAssembly (make wasm): its SIMD128 kernels under Node, and the page in web/ in headless Chromium.

Under Node (./runwasm, make runwasm): the kernel checks every other family gets (logits against PyTorch
and the plain build, prompt batches, greedy text) and stories260K's documented samples. In the browser:
the page served by `python -m http.server` on 127.0.0.1 and driven over the DevTools protocol, with the
files picked as a user picks them (or given by URL), must print what native ./run prints: greedy and
seeded stories260K (its quantised re-exports as the module prints them under Node: no two kernel families
sample the same story from them), greedy 15M-shaped q8_0 and q4 models, special tokens and the end of a
story; bad and too-big files show run's one-line error; Stop stops. All of it is the slow tier; it skips
with the reason when clang's wasm32 target, node or chromium is missing (.ci/run installs them).

`python tests/test_web.py MODEL TOKENIZER [STEPS [SCREENSHOT.png]]` tells one greedy story from "Once upon
a time" in the page and prints it with run's tok/s (the log's browser measurements), optionally saving a
screenshot of the page.
"""
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the other test modules
from conftest import PLAIN_BUILD, VECTOR_BUILD, build  # noqa: E402 (conftest puts the repo on the path)
from binfile import load_bin, model_export  # noqa: E402
from model import ModelArgs  # noqa: E402
from test_run_c import (CONFIGS, OTHER_CASES, check_greedy, check_logits, check_prompt_batches,  # noqa: E402
                        fmt_args, make_model, run_c, stories)  # (stories: a fixture)
from test_run_tokenizer import files, planted  # noqa: E402,F401 (files: a fixture)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless, and quiet on a machine without a network: no background fetches, updates or sync
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-pipe"]


def wasm_toolchain():
    """None when make wasm can build here, else what is missing."""
    if not shutil.which("clang") or not shutil.which("wasm-ld"):
        return "clang and lld (Debian: clang lld) are not installed"
    r = subprocess.run(["clang", "--target=wasm32-wasi", "-x", "c", "-", "-o", os.devnull],
                       input=b"#include <stdio.h>\nint main(void){puts(\"\");return 0;}", capture_output=True)
    return None if r.returncode == 0 else "clang's wasm32-wasi target lacks wasi-libc (Debian: wasi-libc " \
                                          "libclang-rt-14-dev-wasm32)"


MISSING = wasm_toolchain()


# -----------------------------------------------------------------------------
# a browser over the DevTools protocol: Chromium's --remote-debugging-pipe reads commands as
# NUL-terminated JSON on its fd 3 and writes replies and events on its fd 4


class Browser:
    def __init__(self, user_dir):
        to_chrome, from_chrome = os.pipe(), os.pipe()
        # the child's ends, moved above 9 so that bash's 3<& and 4>& cannot overwrite them
        r, w = fcntl_dup(to_chrome[0]), fcntl_dup(from_chrome[1])
        shell = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", shell, CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}",
                                      "about:blank"], pass_fds=(r, w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (*to_chrome, from_chrome[1], r, w):
            if fd != to_chrome[1]:
                os.close(fd)
        self.out, self.inp, self.buf, self.next_id = to_chrome[1], from_chrome[0], b"", 0
        self.events = []  # console messages and exceptions, for failure messages
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1000, height=900, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method, session=False, timeout=60, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            reply = self.read(end - time.monotonic())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            if reply.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown"):
                self.events.append(reply["params"])

    def read(self, timeout):
        while b"\0" not in self.buf:
            if timeout <= 0 or not select.select([self.inp], [], [], timeout)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.inp, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def js(self, expression):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url):
        self.url = url
        self.call("Page.navigate", session=True, url=url)
        self.wait("document.readyState === 'complete' && document.body.dataset.state === 'idle'", 30)

    def pick_file(self, input_id, path):
        """What a user does in the file dialog: the file at path becomes the input's file."""
        obj = self.call("Runtime.evaluate", session=True, expression=f"document.getElementById('{input_id}')")
        self.call("DOM.setFileInputFiles", session=True, files=[str(path)], objectId=obj["result"]["objectId"])

    def wait(self, condition, timeout):
        end = time.monotonic() + timeout
        while not self.js(f"Boolean({condition})"):
            if time.monotonic() > end:
                raise TimeoutError(f"{condition}: not true after {timeout} s; page: {self.state()}; events: "
                                   f"{self.events[-5:]}")
            time.sleep(0.05)

    def state(self):
        return self.js("({state: document.body.dataset.state, status: document.getElementById('status').textContent,"
                       " story: document.getElementById('story').textContent,"
                       " log: document.getElementById('log').textContent})")

    def screenshot(self, path):
        png = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(png))

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.out)
        os.close(self.inp)


def fcntl_dup(fd):
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)


class Site:
    """web/ and a folder of models served by `python -m http.server` on 127.0.0.1, as a user serves them:
    the page is at /web/index.html, the models at /models/."""
    def __init__(self, root):
        self.root = Path(root)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        if not (self.root / "web").exists():
            (self.root / "web").symlink_to(REPO / "web")
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                                     cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        self.url = line.split("(")[1].split(")")[0]

    def add(self, path, name=None):
        """A model or tokenizer file served at models/NAME: its URL relative to the page."""
        name = name or Path(path).name
        dest = self.root / "models" / name
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        dest.symlink_to(Path(path).resolve())
        return f"../models/{name}"

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def tell(browser, model, tokenizer, prompt="", temperature="0", topp="0.9", steps="256", seed="", timeout=120,
         wait=True):
    """Fill the form as a user would and start a story; model and tokenizer are a file to pick (a Path) or
    a URL (a str). Returns the page's state once the run has ended (or at once with wait=False)."""
    browser.open(browser.url)  # a fresh page: nothing left from the last story
    for what, src in (("model", model), ("tokenizer", tokenizer)):
        if isinstance(src, Path):
            browser.pick_file(f"{what}-file", src)
        else:
            browser.js(f"document.getElementById('{what}-file').value = ''; "
                       f"document.getElementById('{what}-url').value = {json.dumps(src)}")
    for field, value in (("prompt", prompt), ("temperature", temperature), ("topp", topp), ("steps", steps),
                         ("seed", seed)):
        browser.js(f"document.getElementById('{field}').value = {json.dumps(str(value))}")
    browser.js("document.getElementById('start').click()")
    assert browser.js("document.body.dataset.state") != "idle", "the form did not start a run"
    if wait:
        browser.wait("document.body.dataset.state !== 'running'", timeout)
    return browser.state()


# -----------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def runwasm():
    if MISSING:
        pytest.skip(f"make wasm: {MISSING}")
    if not shutil.which("node"):
        pytest.skip("node is not installed (./runwasm runs under it)")
    build("runwasm", PLAIN_BUILD)
    return "runwasm"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(browser, site): one headless Chromium and one server for the module's tests."""
    if MISSING:
        pytest.skip(f"make wasm: {MISSING}")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: chromium)")
    build("wasm", PLAIN_BUILD)
    site = Site(tmp_path_factory.mktemp("site"))
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    browser.open(f"{site.url}web/index.html")
    yield browser, site
    browser.close()
    site.close()


@pytest.fixture(scope="module")
def shaped15M(tmp_path_factory):
    """A random model of stories15M's shape (dim 288, 6 layers, 6 heads, Llama 2's 32,000 tokens) in q8_0
    and q4: {dtype: path}."""
    d = tmp_path_factory.mktemp("shaped15M")
    model = make_model(ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256))
    paths = {}
    for dtype in ("q8_0", "q4"):
        paths[dtype] = d / f"shaped15M_{dtype}.bin"
        model_export(model, paths[dtype], version=3, dtype=dtype)
    return paths


def native(*args, **kw):
    """What native ./run (this CPU's kernels) prints for args: (stdout, stderr) as text."""
    r = run_c(build(VECTOR_BUILD).name, *args, check=False, **kw)
    return r.stdout.decode(), r.stderr.decode()


def assert_told(got, want):
    """The page's story is native's stdout, byte for byte (both UTF-8), and the run ended well."""
    assert got["state"] == "done", got
    assert got["story"].encode() == want.encode(), (got["story"][-200:], want[-200:])


# -----------------------------------------------------------------------------
# the SIMD128 kernels under Node


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("cfg,fmt", OTHER_CASES + [("mqa_untied_v131", "v0"), ("mqa_untied_v131", "v2"),
                                                    ("mha_gs32_theta", "v3_q8_0"), ("gs16", "v3_bf16")])
def test_wasm_kernels_as_every_family(runwasm, cfg, fmt, tmp_path):
    """./runwasm (SIMD128) on one case per weight format and the small groups, as test_run_c's other
    families: logits against PyTorch and the plain build, prompt batches, greedy generation."""
    model = make_model(CONFIGS[cfg])
    version, dtype = fmt_args(fmt)
    path = tmp_path / f"{cfg}_{fmt}.bin"
    model_export(model, path, version=version, dtype=dtype)
    check_logits([PLAIN_BUILD, runwasm], model, path, fmt, tmp_path)
    check_prompt_batches([runwasm], model, path, tmp_path)
    check_greedy([runwasm], model, path, tmp_path)


@pytest.mark.slow
@pytest.mark.ci
def test_wasm_stories260K_as_native(runwasm, shared, tmp_path):
    """The documented samples and a prompt: ./runwasm prints what the plain build prints, and a bad file
    gets the same one-line error."""
    model, tok = shared / "models" / "stories260K.bin", shared / "models" / "tok512.bin"
    for args in (["-t", 0], ["-t", 1.0, "-p", 0.9, "-s", 133742], ["-t", 0, "-i", "Once upon a time, a cat"],
                 ["-t", 0.8, "-p", 0, "-s", 7, "-n", 100]):
        assert run_c(runwasm, model, "-z", tok, *args).stdout == run_c(PLAIN_BUILD, model, "-z", tok, *args).stdout
    bad = tmp_path / "broken.bin"
    bad.write_bytes(model.read_bytes()[:5000])
    wasm, plain = (run_c(b, bad, "-z", tok, check=False) for b in (runwasm, PLAIN_BUILD))
    assert wasm.returncode == plain.returncode == 1 and wasm.stderr == plain.stderr, wasm.stderr


# -----------------------------------------------------------------------------
# the page in headless Chromium


@pytest.mark.slow
@pytest.mark.ci
def test_page_greedy_stories260K_is_native(page, shared):
    browser, _ = page
    model, tok = shared / "models" / "stories260K.bin", shared / "models" / "tok512.bin"
    want, _ = native(model, "-z", tok, "-t", 0, "-n", 256)
    assert want.startswith("Once upon a time, there was a little girl named Lily.")
    got = tell(browser, model, tok, temperature=0, steps=256)
    assert_told(got, want)
    assert "achieved tok/s:" in got["log"]  # run's own stats, shown under the story


@pytest.mark.slow
@pytest.mark.ci
def test_page_seeded_samples_by_url_are_native(page, shared):
    """Files given by URL on the page's origin; the seed, temperature, top-p and prompt reach run."""
    browser, site = page
    model, tok = shared / "models" / "stories260K.bin", shared / "models" / "tok512.bin"
    for t, p, seed, prompt in ((1.0, 0.9, 133742, ""), (0.8, 0.5, 42, "Once upon a time, a cat"), (1.2, 0, 7, "Tim")):
        want, _ = native(model, "-z", tok, "-t", t, "-p", p, "-s", seed, *(["-i", prompt] if prompt else []))
        got = tell(browser, site.add(model), site.add(tok), prompt, temperature=t, topp=p, seed=seed)
        assert_told(got, want)
    # a URL of another origin is refused before anything runs
    got = tell(browser, "http://example.invalid/m.bin", site.add(tok))
    assert got["state"] == "error" and "on this page's origin" in got["log"], got


@pytest.mark.slow
@pytest.mark.ci
def test_page_every_format_is_native(page, runwasm, stories, shared, tmp_path):
    """stories260K as v0 (llama2.c's file), v1, v2 q8_0 and v3 fp32, bf16, q8_0 and q4, sampled with a seed:
    the page prints what the module prints on the command line, and the fp32 and bf16 files what native
    run prints. (On quantised files no two kernel families print the same sampled story: an activation
    rounds to the other int8 neighbour when the sum before it is added in another order, and the
    sample drifts from there; their logits are checked within tolerance above.)"""
    browser, _ = page
    tok = shared / "models" / "tok512.bin"
    formats = dict(stories)
    for fmt in ("v1", "v3_fp32"):
        version, dtype = fmt_args(fmt)
        formats[fmt] = tmp_path / f"stories260K_{fmt}.bin"
        model_export(load_bin(stories["v0"]), formats[fmt], version=version, dtype=dtype)
    for fmt, path in formats.items():
        args = [path, "-z", tok, "-t", 0.8, "-s", 5, "-n", 200]
        got = tell(browser, path, tok, temperature=0.8, seed=5, steps=200)
        assert_told(got, run_c(runwasm, *args).stdout.decode())
        if fmt in ("v0", "v1", "v3_fp32", "v3_bf16"):
            assert_told(got, native(*args)[0])


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("dtype", ["q8_0", "q4"])
def test_page_15M_shaped_model_is_native(page, shaped15M, shared, dtype):
    browser, _ = page
    tok = shared / "models" / "tokenizer.bin"
    want, _ = native(shaped15M[dtype], "-z", tok, "-t", 0, "-n", 80, "-i", "Once upon a time")
    assert_told(tell(browser, shaped15M[dtype], tok, "Once upon a time", temperature=0, steps=80), want)


@pytest.mark.slow
@pytest.mark.ci
def test_page_special_tokens_and_end_of_story(page, files):
    """Our tokenizer format with <|start_story|>/<|end_story|>: special tokens in a prompt, and the story
    ending at <|end_story|>, as native run does (test_run_tokenizer's planted model)."""
    browser, _ = page
    path, _, _ = planted(files)
    tok = next(path.parent.glob("tok*.bin"))
    for prompt in ("Once upon", "The end.<|end_story|><|start_story|>Tim"):
        want, _ = native(path, "-z", tok, "-t", 0, "-n", 30, "-i", prompt)
        assert_told(tell(browser, path, tok, prompt, temperature=0, steps=30), want)


@pytest.mark.slow
@pytest.mark.ci
def test_page_bad_files_show_runs_error(page, shared, tmp_path):
    """A truncated model, a tokenizer of another vocabulary, a bad flag value: the page shows run's
    one-line error, word for word, and no story."""
    browser, _ = page
    model, tok = shared / "models" / "stories260K.bin", shared / "models" / "tokenizer.bin"
    (tmp_path / "broken.bin").write_bytes(model.read_bytes()[:5000])
    shutil.copy(model, tmp_path / "stories260K.bin")
    shutil.copy(tok, tmp_path / "tokenizer.bin")
    for name, args in (("broken.bin", {}), ("stories260K.bin", {}), ("stories260K.bin", {"temperature": "-1"})):
        _, want = native(name, "-z", "tokenizer.bin", "-t", args.get("temperature", 0), "-p", 0.9, "-n", 256,
                         cwd=tmp_path)
        assert want.startswith("run: error: ") and want.count("\n") == 1, want
        got = tell(browser, tmp_path / name, tmp_path / "tokenizer.bin", **args)
        assert got["state"] == "error" and got["story"] == "", got
        assert got["log"] == want


@pytest.mark.slow
@pytest.mark.ci
def test_page_file_too_big_for_wasm32_says_so(page, runwasm, shared, tmp_path):
    """A 3 GB model (sparse: it takes no disk) is more than a 32-bit build can hold: run's one line, in the
    page as under Node, before anything is read or allocated."""
    browser, _ = page
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)
    tok = shared / "models" / "tok512.bin"
    want = run_c(runwasm, huge, "-z", tok, check=False).stderr.decode().replace(str(huge), huge.name)
    assert "32-bit build" in want and want.count("\n") == 1, want
    got = tell(browser, huge, tok)
    assert got["state"] == "error" and got["log"] == want, got


@pytest.mark.slow
@pytest.mark.ci
def test_page_stop_stops(page, shaped15M, shared):
    """Stop ends a run in the middle: the story stops growing, and the next story runs."""
    browser, _ = page
    tok = shared / "models" / "tokenizer.bin"
    args = dict(temperature=1.0, topp=0, seed=3, steps=256)
    full = run_c(PLAIN_BUILD, shaped15M["q8_0"], "-z", tok, "-t", 1.0, "-p", 0, "-s", 3, "-n", 256).stdout
    tell(browser, shaped15M["q8_0"], tok, wait=False, **args)
    browser.wait("/telling: ([5-9]|[0-9]{2,}) tokens/.test(document.getElementById('status').textContent)", 60)
    browser.js("document.getElementById('stop').click()")
    stopped = browser.state()
    assert stopped["state"] == "stopped", stopped
    time.sleep(1.0)
    assert browser.state() == stopped
    assert len(stopped["story"].encode()) < len(full)
    again = tell(browser, shared / "models" / "stories260K.bin", shared / "models" / "tok512.bin", steps=20)
    assert again["state"] == "done" and again["story"].startswith("Once upon a time"), again


# -----------------------------------------------------------------------------
# one story in the page, for the log's measurements and the docs' screenshot


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__.split("\n\n")[-1].strip())
    model, tok = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    steps = argv[3] if len(argv) > 3 else "256"
    subprocess.run(["make", "-C", str(REPO), "wasm"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        site, browser = Site(Path(d) / "site"), Browser(Path(d) / "profile")
        try:
            browser.open(f"{site.url}web/index.html")
            got = tell(browser, model, tok, "Once upon a time", temperature="0", steps=steps, timeout=1200)
            print(got["story"], got["log"], sep="\n", end="")
            if len(argv) > 4:
                browser.screenshot(argv[4])
        finally:
            browser.close()
            site.close()


if __name__ == "__main__":
    main(sys.argv)
