# Build run.c, the C inference program. Needs a C compiler (gcc or clang) and libm; OpenMP optional.
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
#   make rundebug   -O0 -g, for gdb
#   make sanitize   the native build under AddressSanitizer + UndefinedBehaviorSanitizer (run_sanitize)
#   make test       the C tests (pytest); make bench: bench/bench_run.py; make clean
CC ?= cc
ARMCC ?= aarch64-linux-gnu-gcc
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
WARN = -Wall -Wextra
LDLIBS = -lm
# what this compiler accepts, probed once: the CPU's own instruction set and OpenMP
accepts = $(shell echo 'int main(void){return 0;}' | $(CC) $(1) -x c - -o /dev/null 2>/dev/null && echo $(1))
NATIVE := $(or $(call accepts,-march=native),$(call accepts,-mcpu=native))
OPENMP := $(call accepts,-fopenmp)

.PHONY: all runomp runarm test bench clean
all: run

run: run.c
	$(CC) -O3 $(NATIVE) $(OPENMP) $(WARN) -o $@ $< $(LDLIBS)

runomp: run

runplain: run.c
	$(CC) -O3 $(WARN) -o $@ $< $(LDLIBS)

runfast: run.c
	$(CC) -O3 $(NATIVE) $(WARN) -o $@ $< $(LDLIBS)

runavx2: run.c
	$(CC) -O3 -march=haswell -fopenmp $(WARN) -o $@ $< $(LDLIBS)

runavxvnni: run.c
	$(CC) -O3 -march=haswell -mavxvnni -fopenmp $(WARN) -o $@ $< $(LDLIBS)

runarm: runarm_neon runarm_dot
runarm_neon: run.c
	$(ARMCC) -O3 -march=armv8-a -fopenmp $(WARN) -o $@ $< $(LDLIBS)
runarm_dot: run.c
	$(ARMCC) -O3 -march=armv8.2-a+dotprod -fopenmp $(WARN) -o $@ $< $(LDLIBS)

rundebug: run.c
	$(CC) -O0 -g $(WARN) -o $@ $< $(LDLIBS)

sanitize: run_sanitize
run_sanitize: run.c
	$(CC) -O1 -g $(NATIVE) $(OPENMP) -fsanitize=address,undefined -fno-sanitize-recover=all \
		-fno-omit-frame-pointer $(WARN) -o $@ $< $(LDLIBS)

test:
	$(PYTHON) -m pytest -q tests/test_run_c.py tests/test_run_bad_input.py tests/test_run_tokenizer.py

bench:
	$(PYTHON) bench/bench_run.py

clean:
	rm -f run runplain runfast runomp runavx2 runavxvnni runarm_neon runarm_dot rundebug run_sanitize
