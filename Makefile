# Build run.c, the C inference program (its vector kernels are in kernels.h, which it includes). Needs a
# C compiler (gcc or clang) and libm; OpenMP optional.
#   make            ./run: the fastest build this machine's compiler offers: -O3, the vector kernels of
#                   this CPU (-march=native, or -mcpu=native where that is the spelling) and OpenMP
#                   threads, each only where the compiler accepts it; otherwise portable
#   make runomp     the same ./run (llama2.c's users type `make runomp` and then `./run`)
#   make runplain   portable: -O3, plain C kernels, one thread (binary runplain)
#   make runfast    -O3 -march=native: vector kernels, one thread (binary runfast)
#   make runavx2    -O3 -march=haswell -fopenmp: what an AVX2 + FMA laptop gets (tests, bench)
#   make runavxvnni runavx2 + -mavxvnni: AVX-VNNI int8 dot products as on Intel Core since Alder Lake
#   make runarm     aarch64 cross builds (gcc-aarch64-linux-gnu): runarm_neon (armv8-a NEON) and
#                   runarm_dot (armv8.2-a + dot product); the tests run them under qemu-aarch64
#   make wasm       web/run.wasm: run.c for WebAssembly (wasm32-wasi, SIMD128 kernels, one thread) with
#                   clang, lld and wasi-libc from Debian's packages (clang lld wasi-libc
#                   libclang-rt-14-dev-wasm32); web/ is the page that runs it (docs/run.md, "In the browser")
#   make runwasm    ./runwasm: web/run.wasm on the command line under Node (node 18+), for the tests
#   make rundebug   -O0 -g, for gdb
#   make run_sanitize  the native build under AddressSanitizer + UndefinedBehaviorSanitizer
#                   (run_sanitize_plain: the plain kernels, one thread); make sanitize: the C tests on
#                   these two in place of runplain and run, clean or failing
#   make test       the C tests (pytest); make test-quick: the quick tier of the whole suite (pytest -m
#                   "not slow", under a minute); make test-ci: the CI tier (pytest -m ci: llama.cpp, qemu,
#                   browser and sanitizer checks, every-story sweeps); make bench: bench/bench_run.py (flags
#                   in BENCH_ARGS, e.g. make bench BENCH_ARGS="--tables llamacpp"); make llama-cpp:
#                   llama.cpp's tools for bench, built once in ~/.cache/storyllama (bench/llama_tools.py);
#                   make clean
#   make fuzz       fuzz/fuzz.c on run.c under ASan + UBSan for FUZZ_SECONDS (60) or FUZZ_RUNS executions
#                   (0: no limit), whichever ends first; exit 1 on any finding (saved in fuzz/findings/)
#   make pyfuzz     fuzz/pyfuzz.py on the Python readers (GGUF, HF, tokenizers, checkpoints, .bin), every
#                   format for FUZZ_SECONDS (60) in all, or PYFUZZ_RUNS inputs of each; exit 1 on any
#                   finding (saved in fuzz/findings/py/)
CC ?= cc
ARMCC ?= aarch64-linux-gnu-gcc
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
WARN = -Wall -Wextra
LDLIBS = -lm
# what this compiler accepts, probed once: the CPU's own instruction set and OpenMP
accepts = $(shell echo 'int main(void){return 0;}' | $(CC) $(1) -x c - -o /dev/null 2>/dev/null && echo $(1))
NATIVE := $(or $(call accepts,-march=native),$(call accepts,-mcpu=native))
OPENMP := $(call accepts,-fopenmp)

SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= 0
C_TESTS = tests/test_run_c.py tests/test_run_bad_input.py tests/test_run_tokenizer.py tests/test_hostile.py \
          tests/test_prefill.py

.PHONY: all runomp runarm wasm test test-quick test-ci bench llama-cpp clean sanitize fuzz pyfuzz
all: run

run: run.c kernels.h
	$(CC) -O3 $(NATIVE) $(OPENMP) $(WARN) -o $@ $< $(LDLIBS)

runomp: run

runplain: run.c kernels.h
	$(CC) -O3 $(WARN) -o $@ $< $(LDLIBS)

runfast: run.c kernels.h
	$(CC) -O3 $(NATIVE) $(WARN) -o $@ $< $(LDLIBS)

runavx2: run.c kernels.h
	$(CC) -O3 -march=haswell -fopenmp $(WARN) -o $@ $< $(LDLIBS)

runavxvnni: run.c kernels.h
	$(CC) -O3 -march=haswell -mavxvnni -fopenmp $(WARN) -o $@ $< $(LDLIBS)

runarm: runarm_neon runarm_dot
runarm_neon: run.c kernels.h
	$(ARMCC) -O3 -march=armv8-a -fopenmp $(WARN) -o $@ $< $(LDLIBS)
runarm_dot: run.c kernels.h
	$(ARMCC) -O3 -march=armv8.2-a+dotprod -fopenmp $(WARN) -o $@ $< $(LDLIBS)

# WebAssembly: WASI's libc has no mmap, process clocks or getpid of its own; its emulations stand in
# (the mmap one reads the file into memory: the model is read once, into the module's memory), and
# web/wasi.h the few calls it lacks. 4 GB of memory at most (wasm32), a 1 MB stack, no huge pages.
WASMCC ?= clang
WASM_FLAGS = --target=wasm32-wasi -O3 -msimd128 -mnontrapping-fptoint -msign-ext -include web/wasi.h -DHUGE_PAGE_BYTES=64 \
	-D_WASI_EMULATED_MMAN -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_SIGNAL -DHUGE_MIN_STEPS=0
WASM_LDFLAGS = -Wl,--max-memory=4294967296 -Wl,-z,stack-size=1048576 -Wl,--strip-all
WASM_LIBS = -lm -lwasi-emulated-mman -lwasi-emulated-process-clocks -lwasi-emulated-getpid -lwasi-emulated-signal
wasm: web/run.wasm
web/run.wasm: run.c kernels.h web/wasi.h
	$(WASMCC) $(WASM_FLAGS) $(WARN) $(WASM_LDFLAGS) -o $@ $< $(WASM_LIBS)
# ./runwasm: that module on the command line under Node's WASI (web/node.js), as the tests run it
runwasm: web/run.wasm web/node.js
	printf '#!/bin/sh\nexec node --no-warnings "$$(dirname "$$0")/web/node.js" "$$@"\n' > $@
	chmod +x $@

rundebug: run.c kernels.h
	$(CC) -O0 -g $(WARN) -o $@ $< $(LDLIBS)

run_sanitize: run.c kernels.h
	$(CC) -O1 -g $(NATIVE) $(OPENMP) $(SANITIZE) $(WARN) -o $@ $< $(LDLIBS)

run_sanitize_plain: run.c kernels.h
	$(CC) -O1 -g -DPLAIN $(SANITIZE) $(WARN) -o $@ $< $(LDLIBS)

# the C tests with both sanitizer builds standing in for runplain and run: any report fails a test
sanitize: run_sanitize run_sanitize_plain
	STORYLLAMA_BUILDS="run_sanitize_plain run_sanitize" $(PYTHON) -m pytest -q $(C_TESTS)

# the fuzzer: run.c traced for coverage (target.o) and the driver, both under the sanitizers, one thread
fuzz/run_fuzz: fuzz/fuzz.c fuzz/target.c run.c kernels.h
	$(CC) -O1 -g $(NATIVE) $(SANITIZE) -fsanitize-coverage=trace-pc -DHUGE_PAGE_BYTES=64 $(WARN) -c -o fuzz/target.o fuzz/target.c
	$(CC) -O1 -g $(SANITIZE) $(WARN) -o $@ fuzz/fuzz.c fuzz/target.o $(LDLIBS)

fuzz/seeds/made: fuzz/make_seeds.py binfile.py vocab.py tokenizer.py tinystories.py
	$(PYTHON) fuzz/make_seeds.py fuzz/seeds && touch $@

fuzz: fuzz/run_fuzz fuzz/seeds/made
	fuzz/run_fuzz fuzz/seeds $(FUZZ_SECONDS) $(FUZZ_RUNS)

pyfuzz:
	$(PYTHON) fuzz/pyfuzz.py $(if $(PYFUZZ_RUNS),--runs $(PYFUZZ_RUNS),--seconds $(or $(FUZZ_SECONDS),60))

test:
	$(PYTHON) -m pytest -q $(C_TESTS)

test-quick: run runplain
	$(PYTHON) -m pytest -q -m "not slow" tests

test-ci: run runplain  # the tests build the ARM, wasm and sanitizer builds they need, or skip without the tools
	$(PYTHON) -m pytest -q -m ci tests

bench:
	$(PYTHON) bench/bench_run.py $(BENCH_ARGS)

llama-cpp:
	$(PYTHON) bench/llama_tools.py

clean:
	rm -f run runplain runfast runomp runavx2 runavxvnni runarm_neon runarm_dot rundebug run_sanitize run_sanitize_plain \
		fuzz/run_fuzz fuzz/target.o web/run.wasm runwasm
