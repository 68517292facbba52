/*
fuzz/fuzz.c: a coverage-guided mutation fuzzer for run.c that needs nothing but gcc or clang.

    make fuzz FUZZ_SECONDS=60        # seeds (fuzz/make_seeds.py), build, run; exit 1 on any finding
    fuzz/run_fuzz SEEDS_DIR [SECONDS] [MAX_EXECUTIONS]

A case is a checkpoint file, a tokenizer file, the command-line flags and stdin (for chat). Each case
runs run.c's own main() (fuzz/target.c includes run.c) in a forked child built with AddressSanitizer
and UndefinedBehaviorSanitizer. A finding is a crash (a signal), a hang (FUZZ_TIMEOUT_MS, default
2000), a sanitizer report, an exit status other than 0 or 1, or an exit status 1 whose stderr is not
exactly one "run: error: " line (notes aside). Each finding is written to FUZZ_OUT (default
fuzz/findings)/N/ with the files, the flags and a repro.sh for ./run_sanitize. A case that reaches
new edges of run.c joins the corpus: target.c is compiled with -fsanitize-coverage=trace-pc, whose
callback below counts edges in a map the child shares with this process (AFL's scheme: an edge is
the hash of two successive call sites, its count bucketed to 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+).

Mutations know the formats: header fields set to values at the edges of their checks, floats in
the weights set to NaN, inf, 3e38 or subnormals, tokenizer records given lengths past the file or
odd pieces, files cut or grown, bits flipped, seeds spliced; flags are drawn from every option with
good and bad values. FUZZ_SEED fixes the random stream.
*/

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int run_main(int argc, char *argv[]);  // run.c's main, renamed by target.c

// ----------------------------------------------------------------------------
// coverage: the callback of -fsanitize-coverage=trace-pc, into a map shared with the children

#define MAP_SIZE (1 << 16)
static uint8_t *cov;        // (MAP_SIZE) hit counts of the current execution, written by the child
static uintptr_t prev_loc;  // the previous call site's hash (one thread: the fuzz build has no OpenMP)

void __sanitizer_cov_trace_pc(void) {
    if (!cov) { return; }
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uintptr_t loc = ((pc >> 4) ^ (pc << 8) ^ (pc >> 17)) * 0x9E3779B1u & (MAP_SIZE - 1);
    cov[loc ^ prev_loc]++;
    prev_loc = loc >> 1;
}

// the sanitizers' settings, read by their runtimes at start-up: reports get exit codes of their
// own; huge allocations fail (run.c then says "out of memory") instead of filling the machine
const char *__asan_default_options(void) {
    return "exitcode=86:detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=64:abort_on_error=0:symbolize=0";
}
const char *__ubsan_default_options(void) { return "halt_on_error=1:exitcode=87:print_stacktrace=1:symbolize=0"; }
// (symbolize=0: reports come fast, raw addresses in stderr.txt; a finding's repro.sh prints them symbolized)

static uint8_t bucket(uint8_t n) {
    return n == 0 ? 0 : n == 1 ? 1 : n == 2 ? 2 : n == 3 ? 4 : n < 8 ? 8 : n < 16 ? 16 : n < 32 ? 32 : n < 128 ? 64 : 128;
}

// ----------------------------------------------------------------------------
// cases

typedef struct { unsigned char *p; size_t n; } Buf;

typedef struct {
    Buf model;  // the checkpoint file
    Buf tok;    // the tokenizer file
    Buf args;   // flags after the checkpoint, NUL-separated ("-t\0" "0.5\0" ...)
    Buf in;     // stdin
} Case;

static void *xalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "fuzz: out of memory\n"); exit(2); }
    return p;
}

static Buf buf_copy(const void *p, size_t n) {
    Buf b = {xalloc(n), n};
    if (n) { memcpy(b.p, p, n); }
    return b;
}

static Case case_copy(const Case *c) {
    Case d = {buf_copy(c->model.p, c->model.n), buf_copy(c->tok.p, c->tok.n), buf_copy(c->args.p, c->args.n),
              buf_copy(c->in.p, c->in.n)};
    return d;
}

static void case_free(Case *c) { free(c->model.p); free(c->tok.p); free(c->args.p); free(c->in.p); }

static Buf read_file(const char *path) {
    Buf b = {NULL, 0};
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fuzz: cannot read %s: %s\n", path, strerror(errno)); exit(2); }
    fseek(f, 0, SEEK_END);
    b.n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    b.p = xalloc(b.n);
    if (fread(b.p, 1, b.n, f) != b.n) { fprintf(stderr, "fuzz: cannot read %s\n", path); exit(2); }
    fclose(f);
    return b;
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) { fprintf(stderr, "fuzz: cannot write %s\n", path); exit(2); }
}

// ----------------------------------------------------------------------------
// randomness (xorshift64*) and the values mutations draw from

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

static const int32_t INTS[] = {0, 1, 2, 3, 4, -1, -2, 7, 8, 16, 31, 32, 33, 63, 64, 255, 256, 4096, 65535, 65536,
                               (1 << 24) - 1, 1 << 24, 1 << 30, INT32_MAX, INT32_MIN, 0x616b3432};
static const float FLOATS[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65520.0f, 1e6f, 3e38f, -3e38f, 1e-45f, 1e-38f,
                               1.0f / 0.0f, -1.0f / 0.0f, 0.0f / 0.0f};
static const char *PIECES[] = {"", " ", "  ", "   ", "a", " a", "<0x41>", "<0x0A>", "<0xZZ>", "<0x>", "\xe2\x96\x81",
                               "\xff", "\xc3", "\xf0\x9f\x98\x80", "<s>", "\n</s>\n", "<unk>", "<|end_story|>"};
static const char *PROMPTS[] = {"", " ", "Once upon a time", "a  b   c", "\xe2\x96\x81\xe2\x96\x81x", "caf\xc3\xa9 \xf0\x9f\x98\x80",
                                "\xff\xfe\x80", "<0x41><s></s>", "1 2 3", "0 1 2 3 4 5 6 7 8 9", "383", "384",
                                "-1", "1,2,,3", "99999999999", "\t\n", "[INST] hi [/INST]"};

static void put_i32(Buf *b, size_t off, int32_t v) { if (off + 4 <= b->n) { memcpy(b->p + off, &v, 4); } }
static void put_f32(Buf *b, size_t off, float v) { if (off + 4 <= b->n) { memcpy(b->p + off, &v, 4); } }

static int32_t near(int32_t v) {  // an edge value, or v moved a little (wrapping, as a corrupt file would)
    uint32_t u = (uint32_t)v;
    switch (below(4)) {
    case 0: return INTS[below(sizeof(INTS) / sizeof(INTS[0]))];
    case 1: return (int32_t)(u + below(5) - 2u);
    case 2: return (int32_t)(u * 2u);
    default: return (int32_t)(u ^ (1u << below(31)));
    }
}

// ----------------------------------------------------------------------------
// mutations

static void flip_bits(Buf *b) {
    for (uint32_t k = 1 + below(4); k > 0 && b->n; k--) { b->p[below((uint32_t)b->n)] ^= (uint8_t)(1u << below(8)); }
}

static void resize(Buf *b) {
    size_t n = below(2) ? (b->n ? below((uint32_t)b->n) : 0) : b->n + 1 + below(64);
    unsigned char *p = xalloc(n);
    memcpy(p, b->p, n < b->n ? n : b->n);
    for (size_t i = b->n; i < n; i++) { p[i] = (unsigned char)rnd(); }
    free(b->p);
    b->p = p, b->n = n;
}

static void mutate_model(Buf *b) {
    int v0 = b->n < 4 || memcmp(b->p, "\x32\x34\x6b\x61", 4) != 0;  // no magic: a v0 header
    size_t fields = v0 ? 0 : 8;
    switch (below(8)) {
    case 0: case 1: {  // a shape field (dim .. max_seq_len), or v1..v3's version
        size_t off = below(8) == 0 && !v0 ? 4 : fields + 4 * below(7);
        int32_t old = 0;
        if (off + 4 <= b->n) { memcpy(&old, b->p + off, 4); }
        put_i32(b, off, near(old));
        break;
    }
    case 2:  // v2/v3's group size, weight type, rope_theta, norm_eps, shared byte
        if (!v0 && b->n >= 50) {
            switch (below(5)) {
            case 0: put_i32(b, 37, INTS[below(sizeof(INTS) / sizeof(INTS[0]))]); break;
            case 1: b->p[41] = (unsigned char)below(5); break;
            case 2: put_f32(b, 42, FLOATS[below(sizeof(FLOATS) / sizeof(FLOATS[0]))]); break;
            case 3: put_f32(b, 46, FLOATS[below(sizeof(FLOATS) / sizeof(FLOATS[0]))]); break;
            default: b->p[36] = (unsigned char)below(3); break;
            }
        }
        break;
    case 3: case 4:  // weights: a float to an extreme value (or a run of them, or int8 extremes)
        if (b->n > 300) {
            size_t at = 256 + 4 * below((uint32_t)(b->n - 256) / 4);
            for (uint32_t k = below(3) ? 1 : 1 + below(64); k > 0; k--, at += 4) {
                put_f32(b, at, FLOATS[below(sizeof(FLOATS) / sizeof(FLOATS[0]))]);
            }
        }
        break;
    case 5: resize(b); break;
    default: flip_bits(b); break;
    }
}

// offset of tokenizer record i (its f32 score, i32 length, bytes), or 0 past the end
static size_t tok_record(const Buf *b, uint32_t i) {
    size_t off = 4;
    for (; i > 0 && off + 8 <= b->n; i--) {
        int32_t len;
        memcpy(&len, b->p + off + 4, 4);
        if (len < 0 || (size_t)len > b->n - off - 8) { return 0; }
        off += 8 + (size_t)len;
    }
    return off + 8 <= b->n ? off : 0;
}

static void set_piece(Buf *b, size_t off, const char *piece) {  // record at off gets a new text
    int32_t old;
    memcpy(&old, b->p + off + 4, 4);
    size_t n = strlen(piece), rest = off + 8 + (size_t)old;
    if (old < 0 || rest > b->n) { return; }
    unsigned char *p = xalloc(b->n - (size_t)old + n);
    memcpy(p, b->p, off + 8);
    memcpy(p + off + 8, piece, n);
    memcpy(p + off + 8 + n, b->p + rest, b->n - rest);
    int32_t len = (int32_t)n;
    memcpy(p + off + 4, &len, 4);
    free(b->p);
    b->p = p, b->n = b->n - (size_t)old + n;
}

static void mutate_tokenizer(Buf *b) {
    size_t off = tok_record(b, below(400));
    switch (below(6)) {
    case 0: if (off) { set_piece(b, off, PIECES[below(sizeof(PIECES) / sizeof(PIECES[0]))]); } break;
    case 1: if (off) { int32_t len; memcpy(&len, b->p + off + 4, 4); put_i32(b, off + 4, near(len)); } break;
    case 2: if (off) { put_f32(b, off, FLOATS[below(sizeof(FLOATS) / sizeof(FLOATS[0]))]); } break;
    case 3: put_i32(b, 0, near(0)); break;
    case 4: resize(b); break;
    default: flip_bits(b); break;
    }
}

static void add_arg(Buf *b, const char *s) {
    size_t n = strlen(s) + 1;
    unsigned char *p = xalloc(b->n + n);
    if (b->n) { memcpy(p, b->p, b->n); }
    memcpy(p + b->n, s, n);
    free(b->p);
    b->p = p, b->n += n;
}

static const char *pick(const char *const *v, size_t n) { return v[below((uint32_t)n)]; }
#define PICK(...) pick((const char *const[]){__VA_ARGS__}, sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))

// the context length a model's header claims (0 when the file is too short to say)
static int32_t seq_len_of(const Buf *model) {
    int32_t seq_len = 0;
    int v0 = model->n < 4 || memcmp(model->p, "\x32\x34\x6b\x61", 4) != 0;
    if (model->n >= 36) { memcpy(&seq_len, model->p + (v0 ? 24 : 32), 4); }
    return seq_len;
}

// fresh flags: a mode and some options, mostly valid, sometimes not; -n stays small unless the
// model's own context is (a model claiming 2^24 positions can legitimately generate for hours)
static void new_args(Case *c) {
    Buf a = {NULL, 0};
    int32_t seq_len = seq_len_of(&c->model);
    const char *mode = PICK("generate", "generate", "generate", "chat", "logits", "tokenize");
    if (below(10)) { add_arg(&a, "-m"); add_arg(&a, below(50) ? mode : PICK("", "poetry", "-t")); }
    if (below(3)) { add_arg(&a, "-t"); add_arg(&a, PICK("0", "1", "0.8", "1.5", "1e-30", "2e-38", "100", "nan", "-1", "x")); }
    if (below(3)) { add_arg(&a, "-p"); add_arg(&a, PICK("0", "0.9", "1", "0.0001", "0.5", "2", "-0.1")); }
    if (below(4) == 0) { add_arg(&a, "-k"); add_arg(&a, PICK("0", "1", "2", "5", "383", "384", "100000", "-3")); }
    if (below(2)) { add_arg(&a, "-s"); add_arg(&a, PICK("1", "7", "133742", "18446744073709551615", "-1")); }
    if (below(2)) {
        add_arg(&a, "-n");
        add_arg(&a, seq_len > 0 && seq_len <= 256 ? PICK("0", "1", "2", "3", "8", "20", "24", "33", "64", "1000", "-1")
                                                  : PICK("1", "2", "3", "8", "20", "33", "64", "-1", "1.5"));
    }
    if (below(2)) {
        add_arg(&a, "-i");
        if (below(3)) { add_arg(&a, PROMPTS[below(sizeof(PROMPTS) / sizeof(PROMPTS[0]))]); }
        else {  // random bytes and pieces, up to a few hundred bytes
            char s[512];
            size_t n = 0, len = below(300);
            while (n < len) {
                const char *p = below(2) ? PIECES[below(sizeof(PIECES) / sizeof(PIECES[0]))] : (char[]){(char)(1 + below(255)), 0};
                size_t k = strlen(p);
                if (n + k >= sizeof(s)) { break; }
                memcpy(s + n, p, k), n += k;
            }
            s[n] = '\0';
            add_arg(&a, s);
        }
    }
    if (below(4) == 0) { add_arg(&a, "-y"); add_arg(&a, PICK("", "Be brief.", "\xf0\x9f\x98\x80")); }
    if (!strcmp(mode, "logits") || below(8) == 0) {
        add_arg(&a, "-o");
        add_arg(&a, PICK("out.bin", "out.bin", "link.bin", "dangling.bin", ".", "nodir/x.bin"));
    }
    if (below(20)) { add_arg(&a, "-z"); add_arg(&a, "tok.bin"); }  // else the default search, which finds none
    if (below(30) == 0) { add_arg(&a, PICK("-q", "--help", "-n", "t")); }
    free(c->args.p);
    c->args = a;
    if (below(2)) {
        const char *in = PICK("\nhi\n", "Be kind.\nTell me a story\nAnd another\n", "", "sys\n\xff\xfe\n", "\n\n\n\n");
        free(c->in.p);
        c->in = buf_copy(in, strlen(in));
    }
}

// new_args kept -n small for the model it saw, but a later header mutation can claim a huge
// context: then -n 0 (the whole context) or a large -n is a legitimately long run, not a hang
static void bound_steps(Case *c) {
    if (seq_len_of(&c->model) <= 256) { return; }
    Buf a = {NULL, 0};
    int after_n = 0;
    for (size_t i = 0; i < c->args.n; i += strlen((const char *)c->args.p + i) + 1) {
        const char *s = (const char *)c->args.p + i;
        char *end;
        long n = strtol(s, &end, 10);
        add_arg(&a, after_n && end != s && *end == '\0' && (n == 0 || n > 256) ? "64" : s);
        after_n = !strcmp(s, "-n");
    }
    free(c->args.p);
    c->args = a;
}

static void mutate(Case *c, const Case *seeds, int n_seeds) {
    for (uint32_t k = 1 + below(3); k > 0; k--) {
        switch (below(10)) {
        case 0: case 1: case 2: case 3: mutate_model(&c->model); break;
        case 4: case 5: mutate_tokenizer(&c->tok); break;
        case 6: case 7: new_args(c); break;
        case 8: { const Case *s = &seeds[below(n_seeds)]; free(c->model.p); c->model = buf_copy(s->model.p, s->model.n); } break;
        default: { const Case *s = &seeds[below(n_seeds)]; free(c->tok.p); c->tok = buf_copy(s->tok.p, s->tok.n); } break;
        }
    }
    bound_steps(c);
}

// ----------------------------------------------------------------------------
// one execution

typedef struct {
    char dir[256];      // the work folder: files of the case, stderr of the child
    int timeout_ms;
    int to_server, from_server;  // pipes to and from the fork server
    long execs, findings, crashes, hangs, reports, bad_exits, new_cov;
    uint8_t virgin[MAP_SIZE];  // the buckets seen so far per edge
} Fuzzer;

static char path_buf[8][512];
static const char *in_dir(const Fuzzer *f, int slot, const char *name) {
    snprintf(path_buf[slot], sizeof(path_buf[slot]), "%s/%s", f->dir, name);
    return path_buf[slot];
}

// run's command line for the flags in args (NUL-separated), run in the work folder: run model.bin FLAGS
static int argv_of(const Buf *args, char **argv, int max) {
    int argc = 0;
    argv[argc++] = "run";
    argv[argc++] = "model.bin";
    for (size_t i = 0; i < args->n && argc < max - 1; i += strlen((char *)args->p + i) + 1) {
        argv[argc++] = (char *)args->p + i;
    }
    argv[argc] = NULL;
    return argc;
}

// The fork server: a process forked at start-up, while this one is still small, that forks one child
// per case. Forking from here instead would copy the page tables of the whole corpus and of the
// sanitizers' bookkeeping every time (measured: a third of all the time went to copy_page_range).
static void fork_server(Fuzzer *f) {
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0) { perror("fuzz: pipe"); exit(2); }
    fflush(NULL);
    pid_t server = fork();
    if (server < 0) { perror("fuzz: fork"); exit(2); }
    if (server > 0) {
        close(down[0]), close(up[1]);
        f->to_server = down[1], f->from_server = up[0];
        return;
    }
    close(down[1]), close(up[0]);
    char go;
    while (read(down[0], &go, 1) == 1) {
        pid_t pid = fork();
        if (pid == 0) {
            close(down[0]), close(up[1]);
            prev_loc = 0;
            Buf args = read_file(in_dir(f, 7, "args"));
            char *argv[80];
            int argc = argv_of(&args, argv, 80);
            if (chdir(f->dir) != 0) { _exit(2); }
            int in = open(in_dir(f, 3, "stdin.txt"), O_RDONLY), out = open("/dev/null", O_WRONLY);
            int err = open(in_dir(f, 2, "stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(in, 0), dup2(out, 1), dup2(err, 2);
            close(in), close(out), close(err);
            struct itimerval t = {{0, 0}, {f->timeout_ms / 1000, (f->timeout_ms % 1000) * 1000}};
            setitimer(ITIMER_REAL, &t, NULL);  // SIGALRM ends a hang: the verdict calls it one
            exit(run_main(argc, argv));
        }
        int status = 0;
        if (pid < 0) { status = -1; }
        else { while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {} }
        if (write(up[1], &status, sizeof(status)) != sizeof(status)) { _exit(2); }
    }
    _exit(0);
}

// what is wrong with an execution, or NULL, from its wait status and stderr: exit 0 may print notes
// and the speeds, exit 1 notes and exactly one error line; nothing else is expected
static const char *verdict(int status, const char *err, size_t n) {
    if (WIFSIGNALED(status)) { return WTERMSIG(status) == SIGALRM ? "hang" : "crash"; }
    int code = WEXITSTATUS(status), errors = 0;
    if (code == 86 || code == 87 || memmem(err, n, "ERROR: AddressSanitizer", 23) || memmem(err, n, "runtime error", 13)) {
        return "sanitizer";
    }
    if (code != 0 && code != 1) { return "exit status"; }
    for (const char *line = err; line < err + n;) {
        const char *end = memchr(line, '\n', (size_t)(err + n - line));
        size_t len = end ? (size_t)(end - line) : (size_t)(err + n - line);
        // an allocation over max_allocation_size_mb (ours) returns NULL with this warning: run.c then
        // says "out of memory", which is what is checked
        if (memmem(line, len, "WARNING: AddressSanitizer failed to allocate", 44)) { line += len + 1; continue; }
        if (memmem(line, len, "Sanitizer", 9)) { return "sanitizer"; }
        if (len >= 12 && !memcmp(line, "run: error: ", 12)) { errors++; }
        else if (!(len >= 11 && !memcmp(line, "run: note: ", 11)) && !(len >= 15 && !memcmp(line, "achieved tok/s:", 15))
                 && !(code == 0 && len >= 8 && !memcmp(line, "prompt: ", 8))) {  // the speeds run.c reports
            return "stderr";
        }
        line += len + 1;
    }
    return errors == (code == 1) ? NULL : "stderr";
}

static void save_finding(Fuzzer *f, const Case *c, const char *why, const char *out_root) {
    char d[512], p[640];
    snprintf(d, sizeof(d), "%s/%ld", out_root, f->findings);
    mkdir(out_root, 0755);
    mkdir(d, 0755);
    snprintf(p, sizeof(p), "%s/model.bin", d); write_file(p, c->model.p, c->model.n);
    snprintf(p, sizeof(p), "%s/tok.bin", d); write_file(p, c->tok.p, c->tok.n);
    snprintf(p, sizeof(p), "%s/stdin.txt", d); write_file(p, c->in.p, c->in.n);
    snprintf(p, sizeof(p), "%s/why.txt", d); write_file(p, why, strlen(why));
    Buf err = read_file(in_dir(f, 2, "stderr.txt"));
    snprintf(p, sizeof(p), "%s/stderr.txt", d); write_file(p, err.p, err.n);
    free(err.p);
    snprintf(p, sizeof(p), "%s/repro.sh", d);
    FILE *sh = fopen(p, "w");
    if (!sh) { return; }
    fprintf(sh, "#!/bin/sh\n# %s: run from the repository root, after make run_sanitize\nR=$(pwd)\n"
            "cd \"$(dirname \"$0\")\" || exit 2\n\"$R/run_sanitize\" model.bin", why);
    for (size_t i = 0; i < c->args.n; i += strlen((char *)c->args.p + i) + 1) {
        fputs(" '", sh);
        for (const char *a = (char *)c->args.p + i; *a; a++) { if (*a == '\'') { fputs("'\\''", sh); } else { fputc(*a, sh); } }
        fputc('\'', sh);
    }
    fprintf(sh, " < stdin.txt\n");
    fclose(sh);
    chmod(p, 0755);
    fprintf(stderr, "fuzz: finding %ld (%s), saved in %s\n", f->findings, why, d);
}

// run c; returns 1 when it reached new coverage
static int execute(Fuzzer *f, const Case *c, const char *out_root) {
    write_file(in_dir(f, 0, "model.bin"), c->model.p, c->model.n);
    write_file(in_dir(f, 1, "tok.bin"), c->tok.p, c->tok.n);
    write_file(in_dir(f, 3, "stdin.txt"), c->in.p, c->in.n);
    write_file(in_dir(f, 7, "args"), c->args.p, c->args.n);
    unlink(in_dir(f, 4, "out.bin"));
    memset(cov, 0, MAP_SIZE);
    int status;
    if (write(f->to_server, "x", 1) != 1 || read(f->from_server, &status, sizeof(status)) != sizeof(status) || status == -1) {
        fprintf(stderr, "fuzz: the fork server died\n");
        exit(2);
    }
    f->execs++;
    Buf err = read_file(in_dir(f, 2, "stderr.txt"));
    const char *why = verdict(status, (const char *)err.p, err.n);
    free(err.p);
    if (why) {
        f->findings++;
        if (!strcmp(why, "hang")) { f->hangs++; } else if (!strcmp(why, "crash")) { f->crashes++; }
        else if (!strcmp(why, "sanitizer")) { f->reports++; } else { f->bad_exits++; }
        save_finding(f, c, why, out_root);
        return 0;
    }
    int fresh = 0;
    for (int i = 0; i < MAP_SIZE; i++) {
        if (cov[i]) {
            uint8_t b = bucket(cov[i]);
            if (b & ~f->virgin[i]) { fresh = 1; f->virgin[i] |= b; }
        }
    }
    return fresh;
}

static long edges(const Fuzzer *f) {
    long n = 0;
    for (int i = 0; i < MAP_SIZE; i++) { n += f->virgin[i] != 0; }
    return n;
}

// ----------------------------------------------------------------------------
// seeds, corpus, main loop

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int load_seeds(const char *dir, Case **out) {
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "fuzz: cannot open seeds folder %s: %s\n", dir, strerror(errno)); exit(2); }
    Buf models[64], toks[64];
    int nm = 0, nt = 0;
    char p[1024];
    for (struct dirent *e; (e = readdir(d));) {
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (!strncmp(e->d_name, "model_", 6) && ends_with(e->d_name, ".bin") && nm < 64) { models[nm++] = read_file(p); }
        if (!strncmp(e->d_name, "tok_", 4) && ends_with(e->d_name, ".bin") && nt < 64) { toks[nt++] = read_file(p); }
    }
    closedir(d);
    if (!nm || !nt) { fprintf(stderr, "fuzz: %s needs model_*.bin and tok_*.bin seeds (fuzz/make_seeds.py)\n", dir); exit(2); }
    Case *seeds = xalloc(sizeof(Case) * nm * nt);
    int n = 0;
    for (int i = 0; i < nm; i++) {
        for (int j = 0; j < nt; j++) {
            Case c = {buf_copy(models[i].p, models[i].n), buf_copy(toks[j].p, toks[j].n), {NULL, 0}, buf_copy("", 0)};
            add_arg(&c.args, "-n");
            add_arg(&c.args, "8");
            add_arg(&c.args, "-z");
            add_arg(&c.args, "tok.bin");
            seeds[n++] = c;
        }
    }
    for (int i = 0; i < nm; i++) { free(models[i].p); }
    for (int j = 0; j < nt; j++) { free(toks[j].p); }
    fprintf(stderr, "fuzz: %d model and %d tokenizer seeds from %s\n", nm, nt, dir);
    *out = seeds;
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SEEDS_DIR [SECONDS (default 60)] [MAX_EXECUTIONS]\n", argv[0]);
        return 2;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 60.0;
    long max_execs = argc > 3 ? atol(argv[3]) : 0;
    const char *out_root = getenv("FUZZ_OUT") ? getenv("FUZZ_OUT") : "fuzz/findings";
    uint64_t seed = getenv("FUZZ_SEED") ? strtoull(getenv("FUZZ_SEED"), NULL, 10) : (uint64_t)time(NULL);
    rng_state ^= seed * 0x9E3779B97F4A7C15ull;
    static Fuzzer f;  // the coverage bookkeeping is too big for the stack
    f.timeout_ms = getenv("FUZZ_TIMEOUT_MS") ? atoi(getenv("FUZZ_TIMEOUT_MS")) : 2000;
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(f.dir, sizeof(f.dir), "%s/storyllama-fuzz-XXXXXX", tmp);
    if (!mkdtemp(f.dir)) { perror("fuzz: mkdtemp"); return 2; }
    write_file(in_dir(&f, 5, "target.bin"), "", 0);
    if (symlink("target.bin", in_dir(&f, 6, "link.bin")) != 0 || symlink("nowhere/x.bin", in_dir(&f, 6, "dangling.bin")) != 0) {
        perror("fuzz: symlink");
        return 2;
    }
    cov = mmap(NULL, MAP_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (cov == MAP_FAILED) { perror("fuzz: mmap"); return 2; }
    fork_server(&f);

    Case *seeds;
    int n_seeds = load_seeds(argv[1], &seeds);
    int cap = 4096, n = 0;
    Case *corpus = xalloc(sizeof(Case) * cap);
    for (int i = 0; i < n_seeds; i++) {  // every seed runs once as is; all stay in the corpus
        execute(&f, &seeds[i], out_root);
        corpus[n++] = case_copy(&seeds[i]);
    }
    double start = (double)time(NULL), last = start;
    fprintf(stderr, "fuzz: seed %llu, %.0f s, work folder %s\n", (unsigned long long)seed, seconds, f.dir);
    while ((double)time(NULL) - start < seconds && (!max_execs || f.execs < max_execs)) {
        Case c = case_copy(&corpus[below(n)]);
        mutate(&c, seeds, n_seeds);
        if (execute(&f, &c, out_root)) {
            f.new_cov++;
            if (n < cap) { corpus[n++] = c; }
            else { int k = n_seeds + (int)below(cap - n_seeds); case_free(&corpus[k]); corpus[k] = c; }
        } else {
            case_free(&c);
        }
        if ((double)time(NULL) - last >= 10) {
            last = (double)time(NULL);
            fprintf(stderr, "fuzz: %ld executions (%.0f/s), corpus %d, edges %ld, findings %ld\n", f.execs,
                    f.execs / (last - start + 1e-9), n, edges(&f), f.findings);
        }
    }
    double took = (double)time(NULL) - start;
    printf("fuzz: %ld executions in %.0f s (%.0f/s), corpus %d, edges %ld; findings %ld: crashes %ld, hangs %ld, "
           "sanitizer reports %ld, bad exits or stderr %ld%s%s\n", f.execs, took, f.execs / (took > 0 ? took : 1), n,
           edges(&f), f.findings, f.crashes, f.hangs, f.reports, f.bad_exits, f.findings ? " (in " : "",
           f.findings ? out_root : "");
    if (f.findings) { printf(")\n"); }
    close(f.to_server);  // the fork server's read ends: it exits
    wait(NULL);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f.dir);
    if (system(cmd) != 0) { fprintf(stderr, "fuzz: could not remove %s\n", f.dir); }
    return f.findings ? 1 : 0;
}
