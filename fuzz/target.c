// run.c as the fuzzer's target: its main() becomes run_main(), called by fuzz/fuzz.c in a child
// process. Compiled on its own with -fsanitize-coverage=trace-pc, so that only run.c (and the
// kernels.h it includes) is traced.
#define main run_main
#include "../run.c"
