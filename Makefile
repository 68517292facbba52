# Build run.c, the C inference program. Needs a C compiler (gcc or clang) and libm; OpenMP optional.
#   make            run: -O3, portable (plain C kernels, one thread), runs on any CPU this compiler targets
#   make runfast    -O3 -march=native: the vector kernels this CPU has (AVX-512 F/VNNI/BF16), one thread
#   make runomp     runfast + OpenMP threads (OMP_NUM_THREADS picks how many)
#   make rundebug   -O0 -g, for gdb
#   make sanitize   runomp under AddressSanitizer + UndefinedBehaviorSanitizer (binary: run_sanitize)
#   make test       the C tests (pytest); make bench: bench/bench_run.py; make clean
CC ?= cc
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
WARN = -Wall -Wextra
NATIVE = -march=native
LDLIBS = -lm

.PHONY: all test bench clean
all: run

run: run.c
	$(CC) -O3 $(WARN) -o $@ $< $(LDLIBS)

runfast: run.c
	$(CC) -O3 $(NATIVE) $(WARN) -o $@ $< $(LDLIBS)

runomp: run.c
	$(CC) -O3 $(NATIVE) -fopenmp $(WARN) -o $@ $< $(LDLIBS)

rundebug: run.c
	$(CC) -O0 -g $(WARN) -o $@ $< $(LDLIBS)

sanitize: run_sanitize
run_sanitize: run.c
	$(CC) -O1 -g $(NATIVE) -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=all \
		-fno-omit-frame-pointer $(WARN) -o $@ $< $(LDLIBS)

test:
	$(PYTHON) -m pytest -q tests/test_run_c.py tests/test_run_bad_input.py tests/test_run_tokenizer.py

bench:
	$(PYTHON) bench/bench_run.py

clean:
	rm -f run runfast runomp rundebug run_sanitize
