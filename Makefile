# Build run.c, the C inference program. Needs a C compiler (gcc or clang) and libm; OpenMP optional.
#   make            run: -O3, portable (plain C kernels, one thread), runs on any CPU this compiler targets
#   make runfast    -O3 -march=native: the vector kernels this CPU has (AVX-512 F/VNNI/BF16), one thread
#   make runomp     runfast + OpenMP threads (OMP_NUM_THREADS picks how many)
#   make rundebug   -O0 -g, for gdb
#   make run_sanitize  runomp under AddressSanitizer + UndefinedBehaviorSanitizer (run_sanitize_plain: the
#                   plain kernels, one thread); make sanitize: the C tests on these two, clean or failing
#   make test       the C tests (pytest); make bench: bench/bench_run.py; make clean
#   make fuzz       fuzz/fuzz.c on run.c under ASan + UBSan for FUZZ_SECONDS (60) or FUZZ_RUNS executions
#                   (0: no limit), whichever ends first; exit 1 on any finding (saved in fuzz/findings/)
CC ?= cc
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
WARN = -Wall -Wextra
NATIVE = -march=native
LDLIBS = -lm

SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= 0

.PHONY: all test bench clean sanitize fuzz
all: run

run: run.c
	$(CC) -O3 $(WARN) -o $@ $< $(LDLIBS)

runfast: run.c
	$(CC) -O3 $(NATIVE) $(WARN) -o $@ $< $(LDLIBS)

runomp: run.c
	$(CC) -O3 $(NATIVE) -fopenmp $(WARN) -o $@ $< $(LDLIBS)

rundebug: run.c
	$(CC) -O0 -g $(WARN) -o $@ $< $(LDLIBS)

run_sanitize: run.c
	$(CC) -O1 -g $(NATIVE) -fopenmp $(SANITIZE) $(WARN) -o $@ $< $(LDLIBS)

run_sanitize_plain: run.c
	$(CC) -O1 -g -DPLAIN $(SANITIZE) $(WARN) -o $@ $< $(LDLIBS)

# the C tests with both sanitizer builds standing in for run and runomp: any report fails a test
sanitize: run_sanitize run_sanitize_plain
	STORYLLAMA_BUILDS="run_sanitize_plain run_sanitize" $(PYTHON) -m pytest -q tests/test_run_c.py tests/test_run_bad_input.py

# the fuzzer: run.c traced for coverage (target.o) and the driver, both under the sanitizers, one thread
fuzz/run_fuzz: fuzz/fuzz.c fuzz/target.c run.c
	$(CC) -O1 -g $(NATIVE) $(SANITIZE) -fsanitize-coverage=trace-pc -DHUGE_PAGE_BYTES=64 $(WARN) -c -o fuzz/target.o fuzz/target.c
	$(CC) -O1 -g $(SANITIZE) $(WARN) -o $@ fuzz/fuzz.c fuzz/target.o $(LDLIBS)

fuzz/seeds/made: fuzz/make_seeds.py export.py tokenizer.py tinystories.py
	$(PYTHON) fuzz/make_seeds.py fuzz/seeds && touch $@

fuzz: fuzz/run_fuzz fuzz/seeds/made
	fuzz/run_fuzz fuzz/seeds $(FUZZ_SECONDS) $(FUZZ_RUNS)

test:
	$(PYTHON) -m pytest -q tests/test_run_c.py tests/test_run_bad_input.py

bench:
	$(PYTHON) bench/bench_run.py

clean:
	rm -f run runfast runomp rundebug run_sanitize run_sanitize_plain fuzz/run_fuzz fuzz/target.o
