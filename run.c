/*
run.c: inference for storyllama and llama2.c Llama models in one dependency-free C program.

    make run && ./run model.bin [options]            (./run with no arguments lists the options)

Reads every .bin version (v0 legacy, v1 fp32, v2 Q8_0, v3 fp32/bf16/q8_0/q4 with a q6 or q8_0
classifier; docs/formats.md has the byte layouts), maps the weights or reads them onto huge pages, and
generates with llama2.c's sampler: the same seed, temperature and top-p give the same tokens as
llama2.c's run. Needs libc and libm only; OpenMP is optional. The kernels here are plain C; kernels.h,
included once below them, holds their vector twins (AVX-512, AVX2, ARM NEON), chosen at compile time
(-DPLAIN: none), which the tests compare with these.
*/

#define _POSIX_C_SOURCE 200809L  // and with it sigaction's SA_SIGINFO, stat's st_mtim
#define _DEFAULT_SOURCE  // glibc: madvise's MADV_HUGEPAGE
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// threads: OpenMP where the compiler has it (-fopenmp); else its directives vanish and one thread runs
#ifdef _OPENMP
#include <omp.h>
#define OMP(directive) _Pragma(directive)
#else
#define OMP(directive)
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

// the .bin formats are read in place, so their byte order must be the CPU's
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "the .bin formats are little-endian: run.c reads them in place and needs a little-endian CPU"
#endif

// ----------------------------------------------------------------------------
// errors: one line naming the file or flag, then a non-zero exit

#define MSG_BYTES 1024  // enough for any message; a longer one is cut

// "run: error: " msg "\n" into line (4 * MSG_BYTES + 16 bytes), one line whatever msg quotes (a prompt,
// a flag value, a file name): control characters escaped. Returns its length.
static size_t error_line(char *line, const char *msg) {
    size_t n = (size_t)sprintf(line, "run: error: ");
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) { n += (size_t)sprintf(line + n, *p == '\n' ? "\\n" : "\\x%02x", *p); }
        else { line[n++] = (char)*p; }
    }
    line[n++] = '\n';
    line[n] = '\0';
    return n;
}

static void die(const char *fmt, ...) {
    char msg[MSG_BYTES], line[4 * MSG_BYTES + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    error_line(line, msg);
    fputs(line, stderr);
    exit(EXIT_FAILURE);
}

// The story goes to stdout: a write that fails (a full disk, a closed stdout) is an error, so that
// `./run m.bin > story.txt && next` does not carry on without the story.
static void flush_stdout(void) {
    if (fflush(stdout) != 0 || ferror(stdout)) { die("cannot write to stdout: %s", strerror(errno)); }
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { die("out of memory allocating %zu bytes", n); }
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) { die("out of memory allocating %zu x %zu bytes", n, size); }
    return p;
}

#ifndef HUGE_PAGE_BYTES  // the fuzz build sets it small: its runs are a few KB and short
#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#endif

// The buffers every token streams through (the weights, the KV caches), on 2 MB pages where the
// kernel has transparent huge pages: one TLB entry then covers 512 times as much, so streaming the
// weights misses the TLB far less (docs/run.md, "How it is fast"). what names the buffer in the error.
// Free with free().
static void *big_alloc(size_t n, const char *what) {
    size_t huge = HUGE_PAGE_BYTES;
    void *p = NULL;
    n = (n + huge - 1) / huge * huge;
    if (posix_memalign(&p, huge, n) != 0) { die("%s: out of memory allocating %zu bytes", what, n); }
#ifdef MADV_HUGEPAGE  // Linux's; other systems have no such hint
    madvise(p, n, MADV_HUGEPAGE);  // a hint: without THP this is plain memory
#endif
    return p;
}

// n bytes from offset off of fd, or die naming the file
static void read_fully(int fd, unsigned char *buf, size_t n, off_t off, const char *path) {
    while (n > 0) {
        ssize_t got = pread(fd, buf, n < ((size_t)1 << 30) ? n : ((size_t)1 << 30), off);
        if (got < 0 && errno == EINTR) { continue; }
        if (got <= 0) { die("%s: read failed: %s", path, got < 0 ? strerror(errno) : "file shrank while reading"); }
        buf += got, n -= (size_t)got, off += got;
    }
}

// A file to read (what: "checkpoint", "tokenizer"), refused unless it is a regular file before
// anything can block: open() of a FIFO waits for a writer, a directory reads as garbage.
static int open_regular(const char *path, const char *what, size_t *size) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) { die("cannot open %s %s: %s", what, path, strerror(errno)); }
    struct stat st;
    int stated = fstat(fd, &st) == 0;
    if (stated && S_ISDIR(st.st_mode) && !strcmp(what, "checkpoint")) {
        die("%s: not a regular file (expected a %s; a Hugging Face folder becomes one with python export.py "
            "model.bin --hf=%s)", path, what, path);
    }
    if (!stated || !S_ISREG(st.st_mode)) { die("%s: not a regular file (expected a %s)", path, what); }
    if ((uint64_t)st.st_size > SIZE_MAX / 2) {  // 32-bit builds (WebAssembly's): 4 GB of memory in all
        die("%s: %llu bytes is more than this %d-bit build can hold in memory (at most %zu)", path,
            (unsigned long long)st.st_size, (int)(8 * sizeof(size_t)), SIZE_MAX / 2);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *size = (size_t)st.st_size;
    return fd;
}

// a*b and a+b that stick at UINT64_MAX instead of wrapping: sizes computed from a hostile header
// then simply fail to match the file size
static uint64_t mul_sat(uint64_t a, uint64_t b) { return (a && b > UINT64_MAX / a) ? UINT64_MAX : a * b; }
static uint64_t add_sat(uint64_t a, uint64_t b) { return (b > UINT64_MAX - a) ? UINT64_MAX : a + b; }

// unaligned little-endian header fields
static int32_t rd_i32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static uint32_t rd_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static float rd_f32(const unsigned char *p) { float v; memcpy(&v, p, 4); return v; }

static double time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// the model: hyperparameters, weights (pointers into the memory map) and the mapping itself

#define MAGIC 0x616b3432u   // "ak42" read as a little-endian u32
#define HEADER_V1 256       // v1..v3 header bytes

// v3 weight_type byte (v0/v1 are fp32, v2 q8_0): W_Q4_Q8 is the older q4 (q8_0 classifier), W_Q4_Q6 the q4
// export.py writes now (q6 classifier). W_Q6 is no weight_type byte, only how W_Q4_Q6 stores its classifier.
enum { W_F32 = 0, W_BF16 = 1, W_Q8 = 2, W_Q4 = 3, W_Q4_Q8 = 3, W_Q4_Q6 = 4, W_Q6 = 5 };
static const char *WTYPE_NAME[] = {"fp32", "bf16", "q8_0", "q4_q8", "q4"};

typedef struct {
    int version;      // 0..3, from the magic and version fields
    int dim;          // transformer width
    int hidden_dim;   // SwiGLU hidden width
    int n_layers;
    int n_heads;      // query heads
    int n_kv_heads;   // key/value heads (n_heads / n_kv_heads query heads share one)
    int vocab_size;
    int seq_len;      // longest context the model was built for
    int head_size;    // dim / n_heads
    int kv_dim;       // n_kv_heads * head_size
    int shared;       // 1: the classifier is the token embedding matrix
    int file_wtype;   // the v3 weight_type byte (W_F32 .. W_Q4_Q6; v0..v2: W_F32 or W_Q8)
    int wtype;        // W_F32, W_BF16, W_Q8 or W_Q4: the layers' weight type (norms are always fp32; both
                      //   q4 file types keep the embeddings and the classifier in more bits: see classifier_type)
    int group_size;   // q8_0 and q4: weights per scale; 0 otherwise
    float rope_theta; // RoPE base
    float norm_eps;   // RMSNorm epsilon
    unsigned char vocab_id[32];  // v3: sha256 identity of the model's vocabulary (bytes 64..95); all zero: unknown
} Config;

typedef struct {
    const void *w;   // (rows, cols) row-major: float, uint16_t (bf16), int8_t (q8_0), or for q4
                     //   (rows * cols / 2) bytes: byte j of a group holds its weight j in the low
                     //   nibble and weight j + group_size/2 in the high one, each stored + 8
    const float *s;  // q8_0, q4: (rows * cols / group_size) scales, row-major groups; NULL otherwise
    int type;        // W_F32, W_BF16, W_Q8 or W_Q4; W_Q6 (q4 files' embeddings and classifier, 3 bytes a 4
                     //   weights) only where kernels.h reads it (keeps_q6), else expanded to W_Q8 at load
    const void *pw;  // q8_0, q4 where kernels.h packs them: the full blocks of PACK_ROWS rows, packed
    const float *ps; //   (pack_block), and their scales; the rows after them stay in w and s; else NULL
} Mat;

typedef struct {
    const float *rms_att; // (dim)
    const float *rms_ffn; // (dim)
    Mat wq;               // (n_heads * head_size, dim)
    Mat wk;               // (kv_dim, dim)
    Mat wv;               // (kv_dim, dim)
    Mat wo;               // (dim, n_heads * head_size)
    Mat w1;               // (hidden_dim, dim)   gate
    Mat w2;               // (dim, hidden_dim)   down
    Mat w3;               // (hidden_dim, dim)   up
} Layer;

typedef struct {
    Layer *layers;          // (n_layers)
    const float *rms_final; // (dim)
    Mat tok_embeddings;     // (vocab_size, dim)
    Mat wcls;               // (vocab_size, dim): tok_embeddings itself when shared
} Weights;

typedef struct {
    Config c;
    Weights w;
    const char *path;
    unsigned char *data; // the whole file, file_size bytes: mapped, or read onto huge pages (big_alloc)
    int mapped;          // 1: data is a read-only file mapping (munmap), 0: big_alloc (free)
    int fd;              // mapped: the file, kept open (above stdin, stdout, stderr) to see at the end whether it changed
    size_t file_size;
    struct timespec mtime;  // the file's modification time when it was opened
    void **owned;        // realigned copies of fp32 arrays the file stores misaligned (v2 only)
    int n_owned;
} Transformer;

// Walks the tensor layout of a file: with base == NULL it only adds up the size the header
// implies; with the mapping it hands out pointers. v3 starts every array at a multiple of 64.
typedef struct {
    const unsigned char *base;
    uint64_t off;
    uint64_t align;
    Transformer *t;
} Cursor;

static const void *take(Cursor *cur, uint64_t bytes) {
    cur->off = mul_sat((add_sat(cur->off, cur->align - 1)) / cur->align, cur->align);
    const void *p = cur->base ? cur->base + cur->off : NULL;
    cur->off = add_sat(cur->off, bytes);
    return p;
}

// n bytes that t owns (freed with it)
static void *own(Transformer *t, size_t n) {
    void *p = xmalloc(n);
    t->owned = realloc(t->owned, (t->n_owned + 1) * sizeof(void *));
    if (!t->owned) { die("out of memory"); }
    t->owned[t->n_owned++] = p;
    return p;
}

static const float *take_f32(Cursor *cur, uint64_t n) {
    const float *p = take(cur, mul_sat(n, 4));
    if (!p || (uintptr_t)p % sizeof(float) == 0) { return p; }
    // a v2 file with tiny groups can leave scales off 4-byte alignment: copy those few arrays
    float *copy = own(cur->t, n * sizeof(float));
    memcpy(copy, p, n * sizeof(float));
    return copy;
}

// q6: 4 weights in the 24-bit little-endian word of 3 bytes p, each its level (-31..31) + 32 in 6 bits
static inline void q6_levels(int8_t q[4], const uint8_t *p) {
    uint32_t word = p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
    for (int k = 0; k < 4; k++) { q[k] = (int8_t)((word >> (6 * k) & 63) - 32); }
}

// q6 (n, a multiple of 4) into int8 levels in memory t owns: exact, so with the same scales it is a
// q8_0 matrix
static const int8_t *expand_q6(Transformer *t, const uint8_t *p, uint64_t n) {
    int8_t *q = own(t, n);
    for (uint64_t i = 0; i < n; i += 4, p += 3) { q6_levels(q + i, p); }
    return q;
}

static int keeps_q6(int group_size);  // after kernels.h, which says where it reads q6

// a matrix stored as wtype (W_Q6 comes back as W_Q8, expanded, unless kernels.h reads it as it is)
static Mat take_mat(Cursor *cur, int wtype, int group_size, uint64_t rows, uint64_t cols) {
    uint64_t n = mul_sat(rows, cols);
    Mat m = {NULL, NULL, wtype, NULL, NULL};
    if (wtype == W_F32) { m.w = take_f32(cur, n); }
    else if (wtype == W_BF16) { m.w = take(cur, mul_sat(n, 2)); }
    else {
        m.w = take(cur, wtype == W_Q4 ? n / 2 : wtype == W_Q6 ? n / 4 * 3 : n);
        m.s = take_f32(cur, n / group_size);
    }
    if (wtype == W_Q6 && !keeps_q6(group_size)) {
        m.type = W_Q8;
        if (m.w) { m.w = expand_q6(cur->t, m.w, n); }
    }
    return m;
}

// how a file of weight_type file_wtype stores the token embeddings and the classifier: q4 files keep
// them in more bits, because the logits lose the most to 4 bits (docs/export.md: q4 and GPTQ): W_Q4_Q8
// in q8_0, W_Q4_Q6 in q6, which take_mat expands to q8_0 at load, so that the embedding lookup and the
// classifier run as q8_0 in both; one fact, which binfile.py's Q4_CLASSIFIER mirrors
static int classifier_type(int file_wtype) {
    return file_wtype == W_Q4_Q8 ? W_Q8 : file_wtype == W_Q4_Q6 ? W_Q6 : file_wtype;
}

// every tensor in file order; also used with base == NULL to compute the expected file size
static uint64_t walk_layout(Transformer *t, const unsigned char *base) {
    Config *c = &t->c;
    Weights *w = &t->w;
    int L = c->n_layers, wt = c->wtype, ct = classifier_type(c->file_wtype), gs = c->group_size;
    uint64_t dim = c->dim, hidden = c->hidden_dim, kv_dim = c->kv_dim, vocab = c->vocab_size;
    Cursor cur = {base, c->version == 0 ? 28 : HEADER_V1, c->version == 3 ? 64 : 1, t};
    Layer scratch;  // while measuring, every layer's pointers land here
    #define EACH_LAYER(field, take) for (int l = 0; l < L; l++) { (base ? &w->layers[l] : &scratch)->field = take; }
    // "v1 order": the fp32 norms first, then the matrices in the file's weight type. v0 is Meta's
    // order, all fp32: the embeddings first, each layer's ffn norm after wo, and the final norm and
    // the RoPE tables (recomputed here, so skipped) last.
    int v0 = c->version == 0;
    if (v0) { w->tok_embeddings = take_mat(&cur, ct, gs, vocab, dim); }
    EACH_LAYER(rms_att, take_f32(&cur, dim))
    if (!v0) {
        EACH_LAYER(rms_ffn, take_f32(&cur, dim))
        w->rms_final = take_f32(&cur, dim);
        w->tok_embeddings = take_mat(&cur, ct, gs, vocab, dim);
    }
    EACH_LAYER(wq, take_mat(&cur, wt, gs, dim, dim))
    EACH_LAYER(wk, take_mat(&cur, wt, gs, kv_dim, dim))
    EACH_LAYER(wv, take_mat(&cur, wt, gs, kv_dim, dim))
    EACH_LAYER(wo, take_mat(&cur, wt, gs, dim, dim))
    if (v0) { EACH_LAYER(rms_ffn, take_f32(&cur, dim)) }
    EACH_LAYER(w1, take_mat(&cur, wt, gs, hidden, dim))
    EACH_LAYER(w2, take_mat(&cur, wt, gs, dim, hidden))
    EACH_LAYER(w3, take_mat(&cur, wt, gs, hidden, dim))
    if (v0) {
        w->rms_final = take_f32(&cur, dim);
        take(&cur, mul_sat(mul_sat(c->seq_len, c->head_size / 2), 8));  // freq_cis_real, freq_cis_imag
    }
    #undef EACH_LAYER
    w->wcls = c->shared ? w->tok_embeddings : take_mat(&cur, ct, gs, vocab, dim);
    return cur.off;
}

// Parse and check the header (c->version and the shape fields); dies naming the file.
// A model file run.c does not read but export.py does, known by its first bytes (a PyTorch checkpoint
// is a zip archive; a safetensors file starts with its JSON header's 64-bit size): the command that
// makes a .bin of it. No .bin starts so: as a v0 header, each would have a field out of range.
static void refuse_export_sources(const unsigned char *h, size_t size, const char *path) {
    const char *slash = strrchr(path, '/');
    int dir = slash ? (int)(slash - path) + 1 : 0;  // the file's folder with its slash ("out/"), where model.bin goes
    if (size >= 4 && !memcmp(h, "PK\3\4", 4)) {
        die("%s is a PyTorch checkpoint: python export.py %.*smodel.bin --checkpoint=%s, then ./run %.*smodel.bin", path,
            dir, path, path, dir, path);
    }
    if (size >= 4 && !memcmp(h, "GGUF", 4)) {
        die("%s is a GGUF file: python export.py %.*smodel.bin --gguf=%s, then ./run %.*smodel.bin", path, dir, path, path,
            dir, path);
    }
    if (size >= 9 && h[8] == '{' && rd_u32(h + 4) == 0) {
        int folder = slash ? (int)(slash - path) + (slash == path) : 1;  // "/x" -> "/", "x" -> "."
        die("%s is a safetensors file: python export.py model.bin --hf=%.*s (the Hugging Face folder holding it), "
            "then ./run model.bin", path, folder, slash ? path : ".");
    }
}

static void read_header(Transformer *t) {
    Config *c = &t->c;
    const unsigned char *h = t->data;
    size_t size = t->file_size;
    const char *path = t->path;
    refuse_export_sources(h, size, path);
    if (size < 28) { die("%s: truncated: %zu bytes is too short for any .bin header", path, size); }
    int32_t p[7];
    uint32_t magic = rd_u32(h);
    memset(c, 0, sizeof(*c));
    c->wtype = W_F32;
    c->rope_theta = 10000.0f;  // what llama2.c's readers assume for v0..v2
    c->norm_eps = 1e-5f;
    if (magic == MAGIC) {
        if (size < HEADER_V1) { die("%s: truncated: %zu bytes, the header alone needs %d", path, size, HEADER_V1); }
        c->version = rd_i32(h + 4);
        if (c->version < 1 || c->version > 3) {
            die("%s: unknown version %d (this run.c reads versions 0, 1, 2 and 3)", path, c->version);
        }
        for (int i = 0; i < 7; i++) { p[i] = rd_i32(h + 8 + 4 * i); }
        if (h[36] > 1) { die("%s: shared_classifier byte is %d, expected 0 or 1", path, h[36]); }
        c->shared = h[36];
        if (c->version == 2) { c->wtype = W_Q8; c->group_size = rd_i32(h + 37); }
        if (c->version == 3) {
            c->group_size = rd_i32(h + 37);
            c->wtype = h[41];
            c->rope_theta = rd_f32(h + 42);
            c->norm_eps = rd_f32(h + 46);
            if (c->wtype > W_Q4_Q6) {
                die("%s: unknown weight_type %d (0 fp32, 1 bf16, 2 q8_0, 3 q4_q8, 4 q4)", path, c->wtype);
            }
            if (!(isfinite(c->rope_theta) && c->rope_theta > 0)) {
                die("%s: rope_theta=%g out of range (expected a positive number)", path, c->rope_theta);
            }
            if (!(isfinite(c->norm_eps) && c->norm_eps > 0 && c->norm_eps < 1)) {
                die("%s: norm_eps=%g out of range (expected 0 < norm_eps < 1)", path, c->norm_eps);
            }
            if (c->wtype < W_Q8 && c->group_size != 0) {
                die("%s: group_size=%d but weight_type is %s (expected 0)", path, c->group_size, WTYPE_NAME[c->wtype]);
            }
            memcpy(c->vocab_id, h + 64, 32);
        }
    } else {
        // v0 has no magic: only a header whose fields make a model is taken for one
        for (int i = 0; i < 7; i++) { p[i] = rd_i32(h + 4 * i); }
        c->version = 0;
        c->shared = p[5] > 0;
        p[5] = p[5] == INT32_MIN ? 0 : abs(p[5]);  // negative vocab_size: unshared classifier
    }
    c->dim = p[0]; c->hidden_dim = p[1]; c->n_layers = p[2]; c->n_heads = p[3];
    c->n_kv_heads = p[4]; c->vocab_size = p[5]; c->seq_len = p[6];
    static const char *names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"};
    const char *problem = NULL;
    char buf[160];
    for (int i = 0; i < 7 && !problem; i++) {
        int v = i == 5 ? c->vocab_size : p[i];
        if (v <= 0 || v >= (1 << 24)) {
            snprintf(buf, sizeof(buf), "%s=%d out of range (expected 1 .. 2^24-1)", names[i], p[i]);
            problem = buf;
        }
    }
    if (!problem && (c->dim % c->n_heads || (c->dim / c->n_heads) % 2)) {
        snprintf(buf, sizeof(buf), "dim=%d is not n_heads=%d times an even head size", c->dim, c->n_heads);
        problem = buf;
    }
    if (!problem && c->n_heads % c->n_kv_heads) {
        snprintf(buf, sizeof(buf), "n_kv_heads=%d does not divide n_heads=%d", c->n_kv_heads, c->n_heads);
        problem = buf;
    }
    if (problem && c->version == 0) {
        die("%s: bad magic 0x%08x: not a .bin model (expected magic 0x%08x, or a legacy v0 header; as v0: %s)",
            path, magic, MAGIC, problem);
    }
    if (problem) { die("%s: header field %s", path, problem); }
    int quantised = c->wtype >= W_Q8, gs = c->group_size;
    int whole = c->wtype == W_Q4_Q6 ? 4 : c->wtype == W_Q4_Q8 ? 2 : 1;  // q4's pairs of weights a byte, q6's fours
    if (quantised && (gs < 1 || gs % whole || c->dim % gs || c->hidden_dim % gs)) {
        die("%s: group_size=%d must be positive%s and divide dim=%d and hidden_dim=%d", path, gs,
            whole == 4 ? ", a multiple of 4" : whole == 2 ? ", even" : "", c->dim, c->hidden_dim);
    }
    c->file_wtype = c->wtype;
    if (c->wtype == W_Q4_Q6) { c->wtype = W_Q4; }  // its layers are q4, like W_Q4_Q8's
    c->head_size = c->dim / c->n_heads;
    c->kv_dim = c->n_kv_heads * c->head_size;
}

// A mapped model file that shrinks under the mapping (`cp new.bin model.bin` truncates it first) makes
// every read of its lost pages a SIGBUS, which would kill the run without a word. The handler turns a
// fault inside the mapping into the one error line. A handler gets no argument of ours, so what it
// needs is the one global state here: the mapping's range and the line, formatted beforehand because
// only write() and _exit() may be called inside it.
static struct {
    const unsigned char *lo;  // the mapping, n bytes; NULL: none
    size_t n, len;
    char line[4 * MSG_BYTES + 16];  // error_line's
} lost;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    const unsigned char *a = info->si_addr;
    if (lost.lo && a >= lost.lo && a < lost.lo + lost.n) {
        ssize_t w = write(STDERR_FILENO, lost.line, lost.len);
        (void)w;  // nothing more can be done about a failed write here
        _exit(EXIT_FAILURE);
    }
    signal(sig, SIG_DFL);  // another bus error: the default action when the faulting access repeats
}

static void catch_lost_pages(const Transformer *t) {
    char msg[MSG_BYTES];
    snprintf(msg, sizeof(msg), "%s: the model file shrank while it was being read (overwritten, e.g. by cp?): run "
             "again once it is whole", t->path);
    lost.len = error_line(lost.line, msg);
    lost.n = t->file_size;
    lost.lo = t->data;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

// dies unless fd, the model file, still has the size and modification time it had when opened: a file
// rewritten while it was read (copied into huge pages, or mapped for the whole run) gave garbage weights
static void check_unchanged(const Transformer *t, int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != t->file_size || st.st_mtim.tv_sec != t->mtime.tv_sec ||
        st.st_mtim.tv_nsec != t->mtime.tv_nsec) {
        die("%s: the model file changed while it was being read (overwritten?): what this run wrote may be wrong; run "
            "again", t->path);
    }
}

// Start-up against steady speed: a file mapping costs nothing up front (pages come in from the page
// cache as the first token touches them, as llama2.c does), but its 4 KB pages stream slower than a
// copy on huge pages, which costs a pass over the file to make (and, when memory is fragmented, the
// kernel's compaction of huge pages). So a run that reads the weights few times (-n below
// HUGE_MIN_STEPS, the logits and tokenize modes) maps the file; a longer one copies it, in parallel
// with threads. A model whose matrices kernels.h packs is always copied: packing reads them all
// anyway, and in a copy it rewrites them in place. passes: how many tokens the run will generate, 0
// for the whole context.
static int packs(const Config *c);  // after kernels.h, whose layout they write
static void pack_layers(Transformer *t);

#ifndef HUGE_MIN_STEPS  // the WebAssembly build sets 0: there a mapping is a copy anyway, so it always copies
#define HUGE_MIN_STEPS 64
#endif
static void build_transformer(Transformer *t, const char *path, int passes) {
    memset(t, 0, sizeof(*t));
    t->path = path;
    t->fd = -1;
    int fd = open_regular(path, "checkpoint", &t->file_size);
    struct stat st;
    if (fstat(fd, &st) != 0) { die("%s: cannot stat: %s", path, strerror(errno)); }
    t->mtime = st.st_mtim;
    if (t->file_size == 0) { die("%s: empty file, expected a .bin model", path); }
    // the header first, so that a wrong file is refused before anything big is allocated or read
    unsigned char header[HEADER_V1] = {0};
    read_fully(fd, header, t->file_size < HEADER_V1 ? t->file_size : HEADER_V1, 0, path);
    t->data = header;
    read_header(t);
    // each layer holds at least its two fp32 norm vectors: a lower bound of the size in O(1), before
    // the O(n_layers) walk (2^24 - 1 layers are a flipped bit away)
    uint64_t at_least = mul_sat(t->c.n_layers, 8ull * t->c.dim);
    if (t->file_size < at_least) {
        die("%s: truncated: %zu bytes, the v%d header implies at least %llu", path, t->file_size, t->c.version,
            (unsigned long long)at_least);
    }
    uint64_t expected = walk_layout(t, NULL);
    if (t->file_size < expected) {
        die("%s: truncated: %zu bytes, the v%d header implies %llu", path, t->file_size, t->c.version,
            (unsigned long long)expected);
    }
    if (t->file_size != expected) {
        die("%s: size %zu bytes does not match the %llu the v%d header implies", path, t->file_size,
            (unsigned long long)expected, t->c.version);
    }
    if (passes == 0) { passes = t->c.seq_len; }
    t->mapped = passes < HUGE_MIN_STEPS && !packs(&t->c);
    if (t->mapped) {
        t->data = mmap(NULL, t->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (t->data == MAP_FAILED) { die("%s: cannot map %zu bytes: %s", path, t->file_size, strerror(errno)); }
#ifdef MADV_WILLNEED  // where the system has the hint
        madvise(t->data, t->file_size, MADV_WILLNEED);  // a cold page cache starts reading ahead now
#endif
        catch_lost_pages(t);
        t->fd = fcntl(fd, F_DUPFD, 3);  // not 0..2: with stdin or stdout closed, the model must not stand in for them
        if (t->fd < 0) { die("%s: %s", path, strerror(errno)); }
    } else {
        t->data = big_alloc(t->file_size, path);
        size_t chunk = (size_t)32 << 20, n_chunks = (t->file_size + chunk - 1) / chunk;
        OMP("omp parallel for schedule(dynamic) if(n_chunks > 1)")  // threads only for work worth waking them
        for (size_t i = 0; i < n_chunks; i++) {
            size_t off = i * chunk, n = t->file_size - off < chunk ? t->file_size - off : chunk;
            read_fully(fd, t->data + off, n, (off_t)off, path);
        }
        check_unchanged(t, fd);
    }
    close(fd);
    t->w.layers = xcalloc(t->c.n_layers, sizeof(Layer));
    walk_layout(t, t->data);
    pack_layers(t);
}

// the end of a run that read the model: a mapped file must not have changed under it
static void free_transformer(Transformer *t) {
    for (int i = 0; i < t->n_owned; i++) { free(t->owned[i]); }
    free(t->owned);
    free(t->w.layers);
    if (t->mapped) {
        check_unchanged(t, t->fd);
        close(t->fd);
        lost.lo = NULL;
        munmap(t->data, t->file_size);
    } else {
        free(t->data);
    }
}

// ----------------------------------------------------------------------------
// neural net blocks, in plain C: the reference kernels, whose sums kernels.h's vector twins compute
// in another order
//
// Written so that compilers vectorise them without -ffast-math: 16 independent partial sums
// instead of one serial sum.

#define LANES 16

static float dot_plain(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) { acc[k] += a[j + k] * b[j + k]; }
    }
    float sum = 0.0f;
    for (; j < n; j++) { sum += a[j] * b[j]; }
    for (int k = 0; k < LANES; k++) { sum += acc[k]; }
    return sum;
}

// exp for the attention softmax and SiLU: 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2)/2, and a
// degree-7 Taylor polynomial for exp(r) (error < 1 ulp). Unlike libm's expf this vectorises.
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float kf = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // adding 1.5 * 2^23 rounds to an integer
    float r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;   // ln 2 split into two parts
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    uint32_t bits = (uint32_t)((int32_t)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static void rmsnorm(float *o, const float *x, const float *weight, int n, float eps) {
    float ss = dot_plain(x, x, n) / n + eps;
    float inv = 1.0f / sqrtf(ss);
    for (int j = 0; j < n; j++) { o[j] = weight[j] * (inv * x[j]); }
}

// softmax in place for the attention scores (exp_fast); the sampler keeps libm's expf
static void softmax_fast(float *x, int n) {
    float lane[LANES], mx = x[0], sum = 0.0f;
    int j = 0;
    for (int k = 0; k < LANES; k++) { lane[k] = x[0]; }
    for (; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) { lane[k] = x[j + k] > lane[k] ? x[j + k] : lane[k]; }
    }
    for (; j < n; j++) { mx = x[j] > mx ? x[j] : mx; }
    for (int k = 0; k < LANES; k++) { mx = lane[k] > mx ? lane[k] : mx; lane[k] = 0.0f; }
    for (j = 0; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) { x[j + k] = exp_fast(x[j + k] - mx); lane[k] += x[j + k]; }
    }
    for (; j < n; j++) { x[j] = exp_fast(x[j] - mx); sum += x[j]; }
    for (int k = 0; k < LANES; k++) { sum += lane[k]; }
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++) { x[j] *= inv; }
}

// the first index of the maximum, in 16 lanes: the sampler's greedy choice
static int argmax_plain(const float *v, int n) {
    float lane_max[LANES];
    int lane_idx[LANES], j = 0, best = 0;
    for (int k = 0; k < LANES; k++) { lane_max[k] = v[0]; lane_idx[k] = 0; }
    for (; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) {
            int better = v[j + k] > lane_max[k];
            lane_max[k] = better ? v[j + k] : lane_max[k];
            lane_idx[k] = better ? j + k : lane_idx[k];
        }
    }
    for (; j < n; j++) { if (v[j] > v[best]) { best = j; } }
    for (int k = 0; k < LANES; k++) {
        if (lane_max[k] > v[best] || (lane_max[k] == v[best] && lane_idx[k] < best)) { best = lane_idx[k]; }
    }
    return best;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// fp16 <-> fp32 for the KV caches of q8_0 and q4 models, in plain C so that every build stores the same bits
static uint16_t f16_round(float f) {  // round to nearest even; overflow to inf, NaN stays NaN
    uint32_t u, a, sign;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) { return (uint16_t)(sign | 0x7E00u); }
    if (a >= 0x38800000u) {  // normal in fp16 (>= 2^-14): rebias the exponent, round off 13 bits
        a -= 0x38000000u;
        a = (a + 0xFFFu + ((a >> 13) & 1u)) >> 13;
        return (uint16_t)(sign | (a < 0x7C00u ? a : 0x7C00u));
    }
    int e = (int)(a >> 23);
    if (e < 102) { return (uint16_t)sign; }  // below 2^-25: rounds to zero
    uint32_t m = (a & 0x7FFFFFu) | 0x800000u, shift = (uint32_t)(126 - e);  // subnormal: m * 2^-(shift) units of 2^-24
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    r += rem > half || (rem == half && (r & 1u));
    return (uint16_t)(sign | r);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    if (e == 0x1F) { u = sign | 0x7F800000u | (m << 13); }
    else if (e != 0) { u = sign | ((e + 112) << 23) | (m << 13); }
    else {  // zero or subnormal: m * 2^-24, exact in fp32
        float f = (float)m * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ----------------------------------------------------------------------------
// matmul: W (rows, n) @ x (n) -> out (rows), one row at a time

// A matmul's input vector x in the forms its kernel reads: for q8_0 and q4 weights, quantised in
// groups like them, so that the dot products run on int8, like llama2.c's runq. The last fields are
// forms only some of kernels.h's vector kernels read (its prepare_input fills them in).
typedef struct {
    const float *f;   // (n) x itself
    int8_t *q;        // q8_0, q4: (n) x quantised in groups of group_size
    float *s;         // q8_0, q4: (n / group_size) the groups' scales, max|x|/127
    int32_t *sum;     // q4: (n / group_size) the sums of q over each group
    int32_t *corr;    // q8_0: -128 times the sums of q over int8 dot-product lanes, 8 lanes per group
                      //   (group_size >= 32) or per 32 bytes (group_size 4, 8, 16)
    uint16_t *hi;     // bf16: (n) bf16(x)
    uint16_t *lo;     //   (n) bf16(x - hi): hi + lo carries 16 significant bits of x
} Input;

static int quantised(const Config *c) { return c->wtype == W_Q8 || c->wtype == W_Q4; }

static void build_input(Input *in, int n_max, const Config *c) {
    memset(in, 0, sizeof(*in));
    if (quantised(c)) {
        in->q = xmalloc(n_max);
        in->s = xmalloc((n_max / c->group_size + 1) * sizeof(float));
        in->sum = xmalloc((n_max / c->group_size + 1) * sizeof(int32_t));
        in->corr = xmalloc((n_max / 4 + 8) * sizeof(int32_t));
    }
    if (c->wtype == W_BF16) {
        in->hi = xmalloc(n_max * sizeof(uint16_t));
        in->lo = xmalloc(n_max * sizeof(uint16_t));
    }
}

static void free_input(Input *in) { free(in->q); free(in->s); free(in->sum); free(in->corr); free(in->hi); free(in->lo); }

// q8_0 and q4: each group of x scaled by max|x|/127 and rounded half away from zero
static void prepare_input_plain(Input *in, const float *x, int n, const Config *c) {
    in->f = x;
    if (!quantised(c)) { return; }
    int gs = c->group_size;
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + g * gs;
        float amax[LANES] = {0};
        int j = 0;
        for (; j + LANES <= gs; j += LANES) {
            for (int k = 0; k < LANES; k++) { float a = fabsf(xg[j + k]); amax[k] = a > amax[k] ? a : amax[k]; }
        }
        float m = 0.0f;
        for (; j < gs; j++) { float a = fabsf(xg[j]); m = a > m ? a : m; }
        for (int k = 0; k < LANES; k++) { m = amax[k] > m ? amax[k] : m; }
        float scale = m / 127.0f;
        float inv = scale > 0 ? 1.0f / scale : 0.0f;
        in->s[g] = scale;
        int8_t *qg = in->q + g * gs;
        for (j = 0; j < gs; j++) {
            float v = xg[j] * inv;  // in [-127, 127]
            qg[j] = (int8_t)(int32_t)(v + (v >= 0 ? 0.5f : -0.5f));
        }
    }
}

// One row of each weight type; fp32 is dot_plain. Every vector kernel computes the same sums in
// another order.
static inline float dot_bf16_plain(const uint16_t *w, const float *x, int n) {
    float acc[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) { acc[k] += bf16_to_f32(w[j + k]) * x[j + k]; }
    }
    float sum = 0.0f;
    for (; j < n; j++) { sum += bf16_to_f32(w[j]) * x[j]; }
    for (int k = 0; k < LANES; k++) { sum += acc[k]; }
    return sum;
}

// q8_0: sum over groups of (int dot of the group) * w_scale * x_scale, like llama2.c's runq
static float dot_q8_plain(const int8_t *w, const float *ws, const Input *x, int n, int gs) {
    float sum = 0.0f;
    for (int g = 0; g < n / gs; g++) {
        const int8_t *wg = w + g * gs, *xg = x->q + g * gs;
        int32_t isum = 0;
        for (int j = 0; j < gs; j++) { isum += (int32_t)wg[j] * xg[j]; }
        sum += (float)isum * ws[g] * x->s[g];
    }
    return sum;
}

// q4: as q8_0, with weight j of a group (nibble - 8) taken from byte j (low nibble) or j - gs/2
// (high nibble) of the group's gs/2 bytes
static float dot_q4_plain(const uint8_t *w, const float *ws, const Input *x, int n, int gs) {
    float sum = 0.0f;
    int half = gs / 2;
    for (int g = 0; g < n / gs; g++) {
        const uint8_t *wg = w + g * half;
        const int8_t *xg = x->q + g * gs;
        int32_t isum = 0;
        for (int j = 0; j < half; j++) {
            isum += ((int32_t)(wg[j] & 15) - 8) * xg[j] + ((int32_t)(wg[j] >> 4) - 8) * xg[j + half];
        }
        sum += (float)isum * ws[g] * x->s[g];
    }
    return sum;
}

// rows [r0, r1) of W @ x; gs: the group size of q8_0 and q4 (W_Q6 never comes here: it stays q6 only
// where kernels.h reads it, keeps_q6)
static void matmul_rows_plain(float *out, Mat m, const Input *x, int n, int r0, int r1, int gs) {
    for (int r = r0; r < r1; r++) {
        if (m.type == W_F32) { out[r] = dot_plain((const float *)m.w + (size_t)r * n, x->f, n); }
        else if (m.type == W_BF16) { out[r] = dot_bf16_plain((const uint16_t *)m.w + (size_t)r * n, x->f, n); }
        else if (m.type == W_Q8) { out[r] = dot_q8_plain((const int8_t *)m.w + (size_t)r * n, m.s + (size_t)r * (n / gs), x, n, gs); }
        else { out[r] = dot_q4_plain((const uint8_t *)m.w + (size_t)r * (n / 2), m.s + (size_t)r * (n / gs), x, n, gs); }
    }
}

// rows [r0, r1) of W @ x[t] for nt inputs, into out + t * os: kernels.h's twin takes the tokens in
// tiles, each load of the weights serving several of them
static void matmul_tokens_plain(float *out, size_t os, Mat m, const Input *x, int nt, int n, int r0, int r1, int gs) {
    for (int t = 0; t < nt; t++) { matmul_rows_plain(out + t * os, m, &x[t], n, r0, r1, gs); }
}

// ----------------------------------------------------------------------------
// attention over the KV caches
//
// The caches hold tiles of 16 positions, transposed inside: for each layer, kv head and block of 16
// positions, (head_size, 16) elements, component-major. Attention then runs along positions, 16 at a
// time, without per-position sums, and one tile is 4 KB or less of contiguous memory. Elements are
// fp32, or fp16 (f16 = 1) for q8_0 and q4 models, whose weights are small enough that the cache is a
// sizeable share of the bytes a token reads. at: the index of a kv head's first tile in a cache.

// 16 elements of a cache from i on (a row of a tile) as fp32: in place, or converted into buf
static inline const float *cache_row16(const void *cache, size_t i, int f16, float *buf) {
    if (!f16) { return (const float *)cache + i; }
    const uint16_t *h = (const uint16_t *)cache + i;
    for (int k = 0; k < 16; k++) { buf[k] = f16_to_f32(h[k]); }
    return buf;
}

// att[t] = scale * q . k_t over nb tiles: per tile, a sum over i of q[i] times the tile's row i. The
// last tile may run past the position into zeros; the caller drops those scores.
static void attention_scores_plain(float *att, const float *q, const void *kc, size_t at, int nb, int hs, int f16,
                                   float scale) {
    size_t tile = (size_t)hs * 16;
    for (int t = 0; t < nb * 16; t++) { att[t] = 0.0f; }
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < hs; i++) {
            float *ab = att + b * 16, qi = q[i];
            float buf[16];
            const float *row = cache_row16(kc, at + b * tile + i * 16, f16, buf);
            for (int k = 0; k < 16; k++) { ab[k] += qi * row[k]; }
        }
    }
    for (int t = 0; t < nb * 16; t++) { att[t] *= scale; }
}

// out[i] = sum over t of att[t] * v_t[i] for components i0..hs-1: per tile, row i dotted with att
static void attention_values_plain(float *out, const float *att, const void *vc, size_t at, int nb, int hs, int f16,
                                   int i0) {
    size_t tile = (size_t)hs * 16;
    for (int i = i0; i < hs; i++) {
        float lane[16] = {0};
        for (int b = 0; b < nb; b++) {
            const float *ab = att + b * 16;
            float buf[16];
            const float *row = cache_row16(vc, at + b * tile + i * 16, f16, buf);
            for (int k = 0; k < 16; k++) { lane[k] += ab[k] * row[k]; }
        }
        float sum = 0.0f;
        for (int k = 0; k < 16; k++) { sum += lane[k]; }
        out[i] = sum;
    }
}

// the vector twins of the kernels above, and the functions that choose between them: prepare_input,
// matmul_rows, attention_scores, attention_values, argmax
#include "kernels.h"

static int packs(const Config *c) { return PACK_ROWS && PACKS(c->wtype, c->group_size); }
static int keeps_q6(int group_size) { return KEEPS_Q6(group_size); }

// A layer's matrix into the layout of kernels.h's packed kernels, where it has them: in place (the
// model is a copy: see build_transformer) when the layout takes the same bytes, else into memory of
// its own (q4 rows of n % 8 == 4 weights).
static void pack_mat(Transformer *t, Mat *m, int rows, int n) {
    int gs = t->c.group_size, blocks = PACK_ROWS ? rows / PACK_ROWS : 0;
    if (blocks == 0 || !PACKS(m->type, gs)) { return; }
    size_t ng = gs ? n / gs : 0, packed = packed_row_bytes(m->type, n);
    size_t row_bytes = m->type == W_F32 ? 4 * (size_t)n : m->type == W_Q4 ? (size_t)n / 2 : (size_t)n;
    uint8_t *w = (uint8_t *)m->w;
    float *s = (float *)m->s;
    if (packed != row_bytes) { w = own(t, blocks * PACK_ROWS * packed), s = own(t, blocks * PACK_ROWS * ng * sizeof(float)); }
    OMP("omp parallel for if(blocks * packed > ((size_t)1 << 20))")
    for (int b = 0; b < blocks; b++) {
        size_t at = (size_t)b * PACK_ROWS;  // the block's first row
        pack_block(w + at * packed, s ? s + at * ng : NULL, (const uint8_t *)m->w + at * row_bytes, m->s ? m->s + at * ng : NULL,
                   row_bytes, n, gs, m->type);
    }
    m->pw = w, m->ps = s;
}

static void pack_layers(Transformer *t) {
    const Config *c = &t->c;
    for (int l = 0; l < c->n_layers; l++) {
        Layer *ly = &t->w.layers[l];
        pack_mat(t, &ly->wq, c->dim, c->dim);
        pack_mat(t, &ly->wk, c->kv_dim, c->dim);
        pack_mat(t, &ly->wv, c->kv_dim, c->dim);
        pack_mat(t, &ly->wo, c->dim, c->dim);
        pack_mat(t, &ly->w1, c->hidden_dim, c->dim);
        pack_mat(t, &ly->w2, c->dim, c->hidden_dim);
        pack_mat(t, &ly->w3, c->hidden_dim, c->dim);
    }
}

// ----------------------------------------------------------------------------
// the forward pass: tokens at consecutive positions through the model, with a KV cache
//
// forward() runs one token and returns its logits. On the way to forward_thread, the model itself
// layer by layer, each function adds one thing, explained where it lives: forward_tokens the
// prompt's batches and the fp16 caches' fallback to fp32, forward_batch the threads.

typedef struct {
    float *x;  // (batch, dim) residual stream
    float *xb; // (batch, dim) normed input of a branch
    Input *in; // (batch) the current matmul inputs in the weight type's form
    int kv_overflow; // fp16 cache: this thread stored a finite k or v beyond fp16's range
} ThreadState;

typedef struct {  // a look at the CPU time spent (see free_cores)
    double wall;  // seconds, monotonic
    double busy;  // CPU seconds spent by everything, every core (/proc/stat)
    double own;   // CPU seconds spent by this process
} CpuSample;

typedef struct {
    ThreadState *ts;    // (n_threads) private state of each thread
    int n_threads;
    int batch;          // most tokens in one forward pass
    float *q;           // (batch, dim) queries
    float *k;           // (batch, kv_dim) keys of these positions
    float *v;           // (batch, kv_dim) values of these positions
    float *att_out;     // (batch, dim) attention outputs, heads side by side
    float *xb2;         // (batch, dim) branch outputs (wo or w2), added to the residual stream
    float *hb;          // (batch, hidden_dim) w1 x, then silu(w1 x) * w3 x
    float *hb2;         // (batch, hidden_dim) w3 x
    float *att;         // (n_heads, cache_len) attention scores
    float *logits;      // (batch, vocab_size)
    void *key_cache;    // (n_layers, n_kv_heads, cache_len / 16, head_size, 16): tiles, see attention above
    void *value_cache;  // (n_layers, n_kv_heads, cache_len / 16, head_size, 16)
    int kv_f16;         // 1: the caches hold fp16 (uint16_t; q8_0 and q4 models), 0: fp32
    float *rope_cos;    // (max_pos, head_size / 2)
    float *rope_sin;    // (max_pos, head_size / 2)
    int max_pos;        // positions this run can reach
    int cache_len;      // max_pos rounded up to a multiple of 16
    double work;        // multiply-adds per barrier of one token (see forward_batch)
    int nt;             // threads for the next forward pass (see free_cores)
    int adapt;          // 1: nt follows the free cores; 0: always n_threads
    CpuSample last;     // the last look at /proc/stat
} RunState;

// Below this many multiply-adds per barrier a forward pass runs on one thread: a barrier then costs
// more than the work it splits (stories260K's biggest matmul is 512 x 64: its tokens run on one
// thread, its prompt batches on all).
#define PAR_MIN_WORK 65536
#define BATCH 128  // most prompt tokens per forward pass (see forward_tokens)

// since: a look at /proc/stat from the start of the program (see free_cores), if there was one
static void build_run_state(RunState *s, const Config *c, int max_pos, const CpuSample *since) {
    s->max_pos = max_pos;
    s->cache_len = (max_pos + 15) / 16 * 16;
    uint64_t cache = mul_sat(mul_sat(c->n_layers, s->cache_len), c->kv_dim);  // elements of each cache
    if (cache > ((uint64_t)1 << 40) || cache > SIZE_MAX / 8) {  // 32-bit builds: two fp32 caches in 4 GB
        die("KV cache for %d positions is too large: lower -n", max_pos);
    }
    s->n_threads = omp_get_max_threads();
    double macs = (double)c->n_layers * c->dim * (2.0 * c->dim + 2.0 * c->kv_dim + 3.0 * c->hidden_dim)
                + (double)c->vocab_size * c->dim;
    s->work = macs / (5.0 * c->n_layers + 1);
    const char *dyn = getenv("OMP_DYNAMIC");
    s->nt = s->n_threads;
    s->adapt = s->n_threads > 1 && !(dyn && (!strcmp(dyn, "false") || !strcmp(dyn, "FALSE"))) && since;
    if (since) { s->last = *since; }
    s->batch = max_pos < BATCH ? max_pos : BATCH;
    size_t B = s->batch;
    s->ts = xcalloc(s->n_threads, sizeof(ThreadState));
    int n_max = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    for (int i = 0; i < s->n_threads; i++) {
        s->ts[i].x = xcalloc(B * c->dim, sizeof(float));
        s->ts[i].xb = xcalloc(B * c->dim, sizeof(float));
        s->ts[i].in = xcalloc(B, sizeof(Input));
        for (size_t b = 0; b < B; b++) { build_input(&s->ts[i].in[b], n_max, c); }
    }
    s->q = xcalloc(B * c->dim, sizeof(float));
    s->k = xcalloc(B * c->kv_dim, sizeof(float));
    s->v = xcalloc(B * c->kv_dim, sizeof(float));
    s->att_out = xcalloc(B * c->dim, sizeof(float));
    s->xb2 = xcalloc(B * c->dim, sizeof(float));
    s->hb = xcalloc(B * c->hidden_dim, sizeof(float));
    s->hb2 = xcalloc(B * c->hidden_dim, sizeof(float));
    s->att = xcalloc((size_t)c->n_heads * s->cache_len, sizeof(float));
    s->logits = xcalloc(B * c->vocab_size, sizeof(float));
    s->kv_f16 = quantised(c);
    // zeroed now rather than by calloc's lazy pages: the page faults would otherwise come one by one
    // in the middle of generation, as the positions fill the tiles
    size_t cache_bytes = (size_t)cache * (s->kv_f16 ? sizeof(uint16_t) : sizeof(float));
    s->key_cache = memset(big_alloc(cache_bytes, "KV cache (lower -n)"), 0, cache_bytes);
    s->value_cache = memset(big_alloc(cache_bytes, "KV cache (lower -n)"), 0, cache_bytes);
    // RoPE angles pos * theta^(-2i/head_size), computed in fp32 like model.py's tables
    int half = c->head_size / 2;
    s->rope_cos = xmalloc((size_t)max_pos * half * sizeof(float));
    s->rope_sin = xmalloc((size_t)max_pos * half * sizeof(float));
    for (int i = 0; i < half; i++) {
        float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_size);
        for (int pos = 0; pos < max_pos; pos++) {
            float angle = (float)pos * freq;
            s->rope_cos[(size_t)pos * half + i] = (float)cos((double)angle);
            s->rope_sin[(size_t)pos * half + i] = (float)sin((double)angle);
        }
    }
}

static void free_run_state(RunState *s) {
    for (int i = 0; i < s->n_threads; i++) {
        for (int b = 0; b < s->batch; b++) { free_input(&s->ts[i].in[b]); }
        free(s->ts[i].x); free(s->ts[i].xb); free(s->ts[i].in);
    }
    free(s->ts); free(s->q); free(s->k); free(s->v); free(s->att_out); free(s->xb2); free(s->hb); free(s->hb2);
    free(s->att); free(s->logits); free(s->key_cache); free(s->value_cache); free(s->rope_cos); free(s->rope_sin);
}

// Threads under load: when another job keeps a core busy, a thread on that core runs only part of
// the time and every barrier waits for it, so n threads can be far slower than one. So the threads
// a forward pass runs on are the cores the other jobs left free, measured from /proc/stat over the
// last interval (all CPU time spent, less this process's own), unless OMP_DYNAMIC=false asks for
// exactly OMP_NUM_THREADS. Where /proc/stat is missing, every thread runs.
#define FREE_CORES_EVERY 0.1  // seconds between two looks at /proc/stat

static int sample_cpu(CpuSample *cs) {
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8];
    int got = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", v, v + 1, v + 2, v + 3, v + 4, v + 5, v + 6, v + 7) : 0;
    if (f) { fclose(f); }
    if (got != 8) { return 0; }
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    // user nice system idle iowait irq softirq steal: all but idle and iowait are cores not free, and
    // nice too unless we are niced ourselves: the scheduler gives a nice 19 job a sliver beside us
    int niced = getpriority(PRIO_PROCESS, 0) > 0;
    cs->busy = (double)(v[0] + (niced ? v[1] : 0) + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
    cs->own = ts.tv_sec + ts.tv_nsec * 1e-9;
    cs->wall = time_s();
    return 1;
}

// s->nt: the cores the other jobs left free in the last interval, rounded down unless nearly whole
static void free_cores(RunState *s) {
    CpuSample now;
    if (!s->adapt || time_s() - s->last.wall < FREE_CORES_EVERY || !sample_cpu(&now)) { return; }
    double others = ((now.busy - s->last.busy) - (now.own - s->last.own)) / (now.wall - s->last.wall);
    double free = (double)sysconf(_SC_NPROCESSORS_ONLN) - (others > 0 ? others : 0);
    int nt = (int)(free + 0.3);
    s->nt = nt < 1 ? 1 : nt > s->n_threads ? s->n_threads : nt;
    s->last = now;
}

// the token's row of the embedding matrix into x, in fp32
static void embed(float *x, const Transformer *t, int token) {
    const Config *c = &t->c;
    Mat e = t->w.tok_embeddings;
    size_t off = (size_t)token * c->dim;
    if (e.type == W_F32) {
        memcpy(x, (const float *)e.w + off, c->dim * sizeof(float));
    } else if (e.type == W_BF16) {
        for (int i = 0; i < c->dim; i++) { x[i] = bf16_to_f32(((const uint16_t *)e.w)[off + i]); }
    } else if (e.type == W_Q6) {  // q4 files' embeddings, where kept in 6 bits (keeps_q6)
        for (int i = 0; i < c->dim; i += 4) {
            int8_t q[4];
            q6_levels(q, (const uint8_t *)e.w + (off + i) / 4 * 3);
            for (int k = 0; k < 4; k++) { x[i + k] = q[k] * e.s[(off + i + k) / c->group_size]; }
        }
    } else {  // q8_0, also in q4 files (see classifier_type)
        const int8_t *q = e.w;
        for (int i = 0; i < c->dim; i++) { x[i] = q[off + i] * e.s[(off + i) / c->group_size]; }
    }
}

// The part of a matmul's rows that thread tid of nt computes: contiguous, split at multiples of 16
// (packed blocks stay whole, and RoPE pairs inside one thread's part).
static void thread_rows(int rows, int tid, int nt, int *lo, int *hi) {
    *lo = (int)((long)rows * tid / nt) & ~15;
    *hi = tid == nt - 1 ? rows : (int)((long)rows * (tid + 1) / nt) & ~15;
}

// Rows [lo, hi) of W @ x for this thread, for each of nb inputs x[b] into out + b * rows; returns lo
// and hi for the caller's follow-up work. One token streams the rows from memory as matmul_rows
// reads them; for a batch, the rows go in tiles small enough to stay in the L2 cache while every
// input of the batch is multiplied with them, so the weights are read from memory once per batch.
#define TILE_BYTES (64 << 10)
static void matmul_part(float *out, Mat m, const Input *x, int nb, int n, int rows, int tid, int nt,
                        const Config *c, int *lo, int *hi) {
    thread_rows(rows, tid, nt, lo, hi);
    if (nb == 1) { matmul_rows(out, m, x, n, *lo, *hi, c->group_size); return; }
    double row_bytes = m.type == W_F32 ? 4.0 * n : m.type == W_BF16 ? 2.0 * n
                     : (m.type == W_Q8 ? n : m.type == W_Q6 ? 0.75 * n : n / 2.0) + 4.0 * n / c->group_size;
    int tile = (int)(TILE_BYTES / row_bytes) & ~15;
    tile = tile < 16 ? 16 : tile;
    for (int r = *lo; r < *hi; r += tile) {
        int r1 = r + tile < *hi ? r + tile : *hi;
        matmul_tokens(out, rows, m, x, nb, n, r, r1, c->group_size);
    }
}

// each token's residual stream (tokens b0 .. nb - 1) normed with weight, into its matmul input
static void norm_inputs(ThreadState *me, const float *weight, int b0, int nb, const Config *c) {
    for (int b = b0; b < nb; b++) {
        float *xb = me->xb + (size_t)b * c->dim;
        rmsnorm(xb, me->x + (size_t)b * c->dim, weight, c->dim, c->norm_eps);
        prepare_input(&me->in[b], xb, c->dim, c);
    }
}

// RoPE on components [lo, hi) of each token's q or k (n wide): the interleaved pairs (v[2i], v[2i+1])
// of every head rotated by the angle of pair i at the token's position; lo is even
static void rope(const RunState *s, float *v, int n, int pos, int nb, int lo, int hi, int head_size) {
    int half = head_size / 2;
    for (int b = 0; b < nb; b++) {
        float *vb = v + (size_t)b * n;
        const float *cs = s->rope_cos + (size_t)(pos + b) * half, *sn = s->rope_sin + (size_t)(pos + b) * half;
        for (int j = lo; j < hi; j += 2) {
            int i = (j % head_size) / 2;
            float v0 = vb[j], v1 = vb[j + 1];
            vb[j] = v0 * cs[i] - v1 * sn[i];
            vb[j + 1] = v0 * sn[i] + v1 * cs[i];
        }
    }
}

// index of the (cache_len / 16, head_size, 16) tiles of layer l, kv head kvh in a cache
static size_t cache_tiles(const RunState *s, const Config *c, int l, int kvh) {
    return ((size_t)l * c->n_kv_heads + kvh) * s->cache_len * c->head_size;
}

// components [lo, hi) of each token's k or v (kv_dim wide) into a cache, component i of a head into
// row i of the tile holding the token's position; returns 1 when an fp16 cache got a finite value
// beyond its range (stored as inf: see forward_tokens)
static int cache_put(void *cache, const float *kv, const RunState *s, const Config *c, int l, int pos, int nb, int lo,
                     int hi) {
    int hs = c->head_size, overflow = 0;
    for (int b = 0; b < nb; b++, kv += c->kv_dim) {
        size_t in_tile = (size_t)((pos + b) / 16) * hs * 16 + (pos + b) % 16;
        for (int h = lo / hs; h * hs < hi; h++) {
            size_t t = cache_tiles(s, c, l, h) + in_tile;  // t + d * 16: component d of head h
            int i1 = (h + 1) * hs < hi ? (h + 1) * hs : hi;
            for (int i = h * hs > lo ? h * hs : lo; i < i1; i++) {
                size_t at = t + (size_t)(i - h * hs) * 16;
                if (s->kv_f16) {
                    uint16_t f = f16_round(kv[i]);
                    ((uint16_t *)cache)[at] = f;
                    overflow |= (f & 0x7C00u) == 0x7C00u && isfinite(kv[i]);
                } else {
                    ((float *)cache)[at] = kv[i];
                }
            }
        }
    }
    return overflow;
}

// head h of the token at position pos, batch entry bt: its query in s->q, its output into s->att_out
static void attention_head(RunState *s, const Config *c, int l, int h, int pos, int bt) {
    int hs = c->head_size, n = pos + 1, nb = (n + 15) / 16;
    const float *q = s->q + (size_t)bt * c->dim + h * hs;
    float *att = s->att + (size_t)h * s->cache_len, *out = s->att_out + (size_t)bt * c->dim + h * hs;
    size_t at = cache_tiles(s, c, l, h / (c->n_heads / c->n_kv_heads));  // its kv head's tiles, in either cache
    attention_scores(att, q, s->key_cache, at, nb, hs, s->kv_f16, 1.0f / sqrtf((float)hs));
    softmax_fast(att, n);
    for (int t = n; t < nb * 16; t++) { att[t] = 0.0f; }  // so that whole tiles can be summed
    attention_values(out, att, s->value_cache, at, nb, hs, s->kv_f16);
}

static void barrier(void) { OMP("omp barrier") }

// Every head's attention for each token, split between the threads, who then wait for all of it.
// When every thread's share of the q, k and v rows is whole heads (and the kv heads its q heads
// read), each thread can run the attention of its own heads with no barrier before it.
static void attention(RunState *s, const Config *c, int l, int pos, int nb, int tid, int nt) {
    if (c->n_kv_heads % nt == 0 && c->head_size % 4 == 0) {
        for (int h = tid * c->n_heads / nt; h < (tid + 1) * c->n_heads / nt; h++) {
            for (int b = 0; b < nb; b++) { attention_head(s, c, l, h, pos + b, b); }
        }
    } else {
        barrier();
        for (int h = tid; h < c->n_heads; h += nt) {
            for (int b = 0; b < nb; b++) { attention_head(s, c, l, h, pos + b, b); }
        }
    }
    barrier();
}

// The nb tokens at positions pos .. pos + nb - 1 through the model, on thread tid of nt; the logits
// of every one of them (all_logits) or of the last only, into s->logits.
static void forward_thread(const Transformer *t, RunState *s, const int *tokens, int nb, int pos, int all_logits,
                           int tid, int nt) {
    const Config *c = &t->c;
    ThreadState *me = &s->ts[tid];
    int dim = c->dim, hidden = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size, lo, hi;
    for (int b = 0; b < nb; b++) { embed(me->x + (size_t)b * dim, t, tokens[b]); }
    for (int l = 0; l < c->n_layers; l++) {
        const Layer *ly = &t->w.layers[l];
        // attention: q, k and v of the normed stream, RoPE on q and k, k and v into the caches
        norm_inputs(me, ly->rms_att, 0, nb, c);
        matmul_part(s->q, ly->wq, me->in, nb, dim, dim, tid, nt, c, &lo, &hi);
        rope(s, s->q, dim, pos, nb, lo, hi, hs);
        matmul_part(s->k, ly->wk, me->in, nb, dim, kv_dim, tid, nt, c, &lo, &hi);
        rope(s, s->k, kv_dim, pos, nb, lo, hi, hs);
        me->kv_overflow |= cache_put(s->key_cache, s->k, s, c, l, pos, nb, lo, hi);
        matmul_part(s->v, ly->wv, me->in, nb, dim, kv_dim, tid, nt, c, &lo, &hi);
        me->kv_overflow |= cache_put(s->value_cache, s->v, s, c, l, pos, nb, lo, hi);
        attention(s, c, l, pos, nb, tid, nt);
        for (int b = 0; b < nb; b++) { prepare_input(&me->in[b], s->att_out + (size_t)b * dim, dim, c); }
        matmul_part(s->xb2, ly->wo, me->in, nb, dim, dim, tid, nt, c, &lo, &hi);
        barrier();
        for (int i = 0; i < nb * dim; i++) { me->x[i] += s->xb2[i]; }  // the residual connection
        // SwiGLU feed-forward: w2(silu(w1 x) * w3 x)
        norm_inputs(me, ly->rms_ffn, 0, nb, c);
        matmul_part(s->hb, ly->w1, me->in, nb, dim, hidden, tid, nt, c, &lo, &hi);
        matmul_part(s->hb2, ly->w3, me->in, nb, dim, hidden, tid, nt, c, &lo, &hi);
        for (int b = 0; b < nb; b++) {
            float *h1 = s->hb + (size_t)b * hidden, *h3 = s->hb2 + (size_t)b * hidden;
            for (int i = lo; i < hi; i++) { h1[i] = h1[i] / (1.0f + exp_fast(-h1[i])) * h3[i]; }
        }
        barrier();
        for (int b = 0; b < nb; b++) { prepare_input(&me->in[b], s->hb + (size_t)b * hidden, hidden, c); }
        matmul_part(s->xb2, ly->w2, me->in, nb, hidden, dim, tid, nt, c, &lo, &hi);
        barrier();
        for (int i = 0; i < nb * dim; i++) { me->x[i] += s->xb2[i]; }
    }
    int first = all_logits ? 0 : nb - 1;  // the tokens whose logits are wanted: first .. nb - 1
    norm_inputs(me, t->w.rms_final, first, nb, c);
    matmul_part(s->logits, t->w.wcls, me->in + first, nb - first, dim, c->vocab_size, tid, nt, c, &lo, &hi);
}

// Threads: the whole forward pass is one parallel region. Every thread keeps private copies of the
// small vectors (the residual stream, the normed input, the matmul input) and computes them
// redundantly, which is cheaper than handing them over; each matmul's rows and the attention heads
// are split between the threads, which meet at one barrier after each. They run on the cores other
// jobs leave free (free_cores); a batch too small for threads runs on one (PAR_MIN_WORK).
static void forward_batch(const Transformer *t, RunState *s, const int *tokens, int nb, int pos, int all_logits) {
    if (s->n_threads == 1 || nb * s->work < PAR_MIN_WORK) { forward_thread(t, s, tokens, nb, pos, all_logits, 0, 1); return; }
    free_cores(s);
    OMP("omp parallel num_threads(s->nt)")
    forward_thread(t, s, tokens, nb, pos, all_logits, omp_get_thread_num(), omp_get_num_threads());
}

// The fp16 caches of quantised models hold |x| <= 65504. When a k or v beyond that shows up, both
// caches become fp32 (exactly: every half is a float) and the batch is computed again, so the model
// gives its fp32-cache answer rather than infinities; a note on stderr says so.
static void widen_kv_cache(RunState *s, const Transformer *t, int pos) {
    size_t n = (size_t)t->c.n_layers * s->cache_len * t->c.kv_dim;
    void **caches[2] = {&s->key_cache, &s->value_cache};
    for (int k = 0; k < 2; k++) {
        const uint16_t *h = *caches[k];
        float *f = big_alloc(n * sizeof(float), "KV cache (lower -n)");
        for (size_t i = 0; i < n; i++) { f[i] = f16_to_f32(h[i]); }
        free(*caches[k]);
        *caches[k] = f;
    }
    s->kv_f16 = 0;
    fprintf(stderr, "run: note: %s: keys or values beyond fp16's range at position %d: KV cache switched to fp32\n",
            t->path, pos);
}

// Runs n tokens from position pos and returns the logits of the last (all_logits = 0), or of the last
// batch's tokens, (n - 1) % s->batch + 1 rows of vocab_size. Generation runs one token at a time; a
// prompt runs as batches of up to s->batch tokens, so that each weight is read from memory once per
// batch (matmul_part) rather than once per token. Every token of a batch gets the same arithmetic as
// it would alone, so its logits are the same bits.
static float *forward_tokens(const Transformer *t, RunState *s, const int *tokens, int n, int pos, int all_logits) {
    for (int done = 0; done < n; done += s->batch) {
        int nb = n - done < s->batch ? n - done : s->batch, overflow = 0;
        forward_batch(t, s, tokens + done, nb, pos + done, all_logits);
        for (int i = 0; i < s->n_threads; i++) { overflow |= s->ts[i].kv_overflow; s->ts[i].kv_overflow = 0; }
        if (overflow) {
            widen_kv_cache(s, t, pos + done);
            forward_batch(t, s, tokens + done, nb, pos + done, all_logits);  // overwrites the batch's k and v
        }
    }
    return s->logits;
}

static float *forward(const Transformer *t, RunState *s, int token, int pos) {
    return forward_tokens(t, s, &token, 1, pos, 0);
}

// ----------------------------------------------------------------------------
// the tokenizer: storyllama's tokenizer file and llama2.c's, and a BPE encoder that gives
// sentencepiece's ids (merges by score) and Hugging Face tokenizers' (ranked merges, byte-level BPE)

enum { TK_NORMAL = 1, TK_UNKNOWN, TK_CONTROL, TK_USER, TK_UNUSED, TK_BYTE };  // sentencepiece's type numbers
// Where the dummy space goes (a segment is the text between special tokens): nowhere; before the
// whole text (sentencepiece); before the first segment unless it starts with a space (HF Metaspace
// "first"); before every segment that does not (Metaspace "always", ByteLevel add_prefix_space);
// before every segment (HF's Prepend normalizer).
enum { PREFIX_NONE, PREFIX_TEXT, PREFIX_FIRST, PREFIX_EVERY, PREFIX_ALWAYS };
enum { TF_COLLAPSE = 1, TF_BYTE_FALLBACK = 2, TF_BYTE_LEVEL = 4, TF_ADD_BOS = 8, TF_FUSE_UNK = 16,
       TF_IGNORE_MERGES = 32, TF_SPLIT_SPACES = 64, TF_ALL = 127 };
#define TOK_MAGIC 0x4b544c53u  // "SLTK" read as a little-endian u32
#define TOK_HEADER 128         // header bytes of a storyllama tokenizer file

typedef struct {
    int vocab_size;
    char **vocab;        // (vocab_size) token text, NUL-terminated ("▁" already turned into ' ')
    int *len;            // (vocab_size) text lengths in bytes
    float *scores;       // (vocab_size) merge priority when there are no ranked merges: higher first
    unsigned char *type; // (vocab_size) TK_*
    int bos, eos, unk;   // special ids, -1 = none
    int end;             // an end-of-story token besides EOS (e.g. <|end_story|>), -1 = none
    int prefix, flags;   // PREFIX_*, TF_*
    int byte_id[256];    // id of the <0xHH> piece of each byte, -1 if the vocab has none
    short *byte_val;     // (vocab_size) the byte a <0xHH> piece stands for, -1 for other pieces
    int *table;          // hash table (table_size slots) of normal piece ids, -1 = empty
    int table_size;      // a power of two, at least twice vocab_size
    int max_len;         // longest normal piece in bytes
    int *merges;         // (n_merges, 3) left, right, result ids, by rank: rank 0 merges first
    int n_merges;
    int *merge_table;    // hash table (merge_table_size slots) of ranks by (left, right), -1 = empty
    int merge_table_size;
    int *special;        // (n_special) ids matched as one token wherever they appear in a prompt, longest first
    int n_special;
    unsigned char special_lead[256];  // 1: some special token's text starts with this byte
    uint32_t *classes;   // (n_classes) byte-level split: code point | class << 24 (0 other, 1 letter, 2 number)
    int n_classes;
    unsigned char identity[32];  // sha256 of the vocabulary; all zero: unknown (llama2.c's files)
    char *data;          // the token texts, back to back
    unsigned char *file, *in_text;  // while reading: the file's bytes, (vocab_size) 1 = matched in text
} Tokenizer;

static uint32_t hash_bytes(const char *s, int n) {  // FNV-1a
    uint32_t h = 2166136261u;
    for (int i = 0; i < n; i++) { h = (h ^ (unsigned char)s[i]) * 16777619u; }
    return h;
}

static uint32_t hash_pair(int a, int b) { return (uint32_t)a * 2654435761u ^ ((uint32_t)b * 2246822519u + 0x9e3779b9u); }

static int lookup(const Tokenizer *tk, const char *s, int n) {  // the normal piece s[0..n), or -1
    if (n > tk->max_len) { return -1; }
    uint32_t mask = tk->table_size - 1;
    for (uint32_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int id = tk->table[i];
        if (id < 0) { return -1; }
        if (tk->len[id] == n && memcmp(tk->vocab[id], s, n) == 0) { return id; }
    }
}

static int merge_rank(const Tokenizer *tk, int a, int b) {  // rank of the merge (a, b), or -1
    if (tk->n_merges == 0 || a < 0 || b < 0) { return -1; }
    uint32_t mask = tk->merge_table_size - 1;
    for (uint32_t i = hash_pair(a, b) & mask;; i = (i + 1) & mask) {
        int r = tk->merge_table[i];
        if (r < 0) { return -1; }
        if (tk->merges[3 * r] == a && tk->merges[3 * r + 1] == b) { return r; }
    }
}

static int parse_byte_piece(const char *p, int n) {  // "<0xHH>" -> HH, else -1
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') { return -1; }
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (d < 0) { return -1; }
        v = v * 16 + d;
    }
    return v;
}

// token i's text: n bytes at src, copied NUL-terminated to tk->data + *pout
static void take_piece(Tokenizer *tk, int i, const unsigned char *src, int n, size_t *pout) {
    tk->vocab[i] = tk->data + *pout;
    tk->len[i] = n;
    memcpy(tk->vocab[i], src, n);
    tk->vocab[i][n] = '\0';
    *pout += (size_t)n + 1;
}

// llama2.c's file: i32 max_token_length, then per token f32 score, i32 len, len bytes. Its types are
// guessed as llama2.c's run does: <unk>, <s>, </s> at 0, 1, 2, <0xHH> byte pieces, the rest normal.
static void read_llama2c(Tokenizer *tk, const unsigned char *b, size_t size, const char *path) {
    if (size < 4 || rd_i32(b) < 0) {
        die("%s: not a tokenizer .bin (expected storyllama's magic \"SLTK\", or llama2.c's i32 max_token_length, "
            "then score/length/bytes per token)", path);
    }
    size_t off = 4, pout = 0;
    int n = tk->vocab_size, multi_space = 0;
    for (int i = 0; i < n; i++) {
        if (off + 8 > size) { die("%s holds %d tokens but the model's vocab_size is %d: use the model's own tokenizer (-z)", path, i, n); }
        tk->scores[i] = rd_f32(b + off);
        int32_t len = rd_i32(b + off + 4);
        off += 8;
        if (len < 0 || (size_t)len > size - off) { die("%s: token %d has length %d, past the end of the file", path, i, len); }
        take_piece(tk, i, b + off, len, &pout);
        off += len;
        tk->type[i] = parse_byte_piece(tk->vocab[i], len) >= 0 ? TK_BYTE : i == 0 ? TK_UNKNOWN : i <= 2 ? TK_CONTROL : TK_NORMAL;
        int spaces = 0;
        while (spaces < len && tk->vocab[i][spaces] == ' ') { spaces++; }
        multi_space |= tk->type[i] == TK_NORMAL && spaces >= 2 && spaces == len;
    }
    if (off != size) { die("%s holds more than the model's %d tokens: use the model's own tokenizer (-z)", path, n); }
    tk->unk = 0;
    tk->bos = n > 1 ? 1 : -1;
    tk->eos = n > 2 ? 2 : -1;
    tk->end = -1;
    tk->prefix = PREFIX_TEXT;
    // The file does not carry sentencepiece's remove_extra_whitespaces flag. A vocabulary trained
    // with it on cannot contain a piece of two or more spaces, one trained with it off (Llama 2)
    // nearly always does: so collapse whitespace exactly when there is no such piece.
    tk->flags = TF_ADD_BOS | TF_BYTE_FALLBACK | (multi_space ? 0 : TF_COLLAPSE);
}

// storyllama's file (vocab.py and docs/formats.md have the layout). Every field is checked before use.
static void read_storyllama(Tokenizer *tk, const unsigned char *b, size_t size, const char *path) {
    unsigned char *in_text = tk->in_text;
    if (size < TOK_HEADER) { die("%s: truncated: %zu bytes, the header alone needs %d", path, size, TOK_HEADER); }
    int version = rd_i32(b + 4), n = rd_i32(b + 8);
    if (version != 1) { die("%s: tokenizer file version %d, this run.c reads version 1 (and llama2.c's files)", path, version); }
    if (n != tk->vocab_size) {
        die("%s holds %d tokens but the model's vocab_size is %d: use the model's own tokenizer (-z)", path, n, tk->vocab_size);
    }
    static const char *names[4] = {"bos_id", "eos_id", "unk_id", "end_id"};
    int *ids[4] = {&tk->bos, &tk->eos, &tk->unk, &tk->end};
    for (int k = 0; k < 4; k++) {
        *ids[k] = rd_i32(b + 12 + 4 * k);
        if (*ids[k] < -1 || *ids[k] >= n) { die("%s: %s=%d out of range (-1 or 0..%d)", path, names[k], *ids[k], n - 1); }
    }
    int n_merges = rd_i32(b + 28), n_classes = rd_i32(b + 32);
    tk->prefix = b[36];
    tk->flags = b[37];
    if (n_merges < 0 || n_merges >= (1 << 24)) { die("%s: n_merges=%d out of range (0 .. 2^24-1)", path, n_merges); }
    if (n_classes < 0 || n_classes > 0x110000) { die("%s: n_classes=%d out of range (0 .. 0x110000)", path, n_classes); }
    if (tk->prefix > PREFIX_ALWAYS || (tk->flags & ~TF_ALL)) { die("%s: prefix=%d or flags=%d unknown", path, tk->prefix, tk->flags); }
    for (int i = 38; i < TOK_HEADER; i++) {
        if ((i < 64 || i >= 96) && b[i]) { die("%s: header byte %d is %d, expected 0", path, i, b[i]); }
    }
    memcpy(tk->identity, b + 64, 32);
    size_t off = TOK_HEADER, pout = 0;
    for (int i = 0; i < n; i++) {
        if (size - off < 10) { die("%s: truncated in token %d of %d", path, i, n); }
        tk->type[i] = b[off];
        in_text[i] = b[off + 1];
        tk->scores[i] = rd_f32(b + off + 2);
        int32_t len = rd_i32(b + off + 6);
        off += 10;
        if (tk->type[i] < TK_NORMAL || tk->type[i] > TK_BYTE || in_text[i] > 1) {
            die("%s: token %d has type %d and in_text %d (expected 1..6 and 0 or 1)", path, i, tk->type[i], in_text[i]);
        }
        if (len < 0 || (size_t)len > size - off) { die("%s: token %d has length %d, past the end of the file", path, i, len); }
        take_piece(tk, i, b + off, len, &pout);
        off += len;
    }
    if ((uint64_t)(size - off) != 12 * (uint64_t)n_merges + 4 * (uint64_t)n_classes) {
        die("%s: size %zu bytes does not match its %d tokens, %d merges and %d character classes", path, size, n, n_merges, n_classes);
    }
    tk->n_merges = n_merges;
    tk->merges = xmalloc((size_t)3 * n_merges * sizeof(int));
    for (int r = 0; r < n_merges; r++, off += 12) {
        int *m = tk->merges + 3 * r;
        for (int k = 0; k < 3; k++) { m[k] = rd_i32(b + off + 4 * k); }
        int ok = m[0] >= 0 && m[0] < n && m[1] >= 0 && m[1] < n && m[2] >= 0 && m[2] < n;
        if (!ok || tk->len[m[2]] != tk->len[m[0]] + tk->len[m[1]] || memcmp(tk->vocab[m[2]], tk->vocab[m[0]], tk->len[m[0]]) ||
            memcmp(tk->vocab[m[2]] + tk->len[m[0]], tk->vocab[m[1]], tk->len[m[1]])) {
            die("%s: merge %d (%d, %d -> %d) does not join two tokens into a third", path, r, m[0], m[1], m[2]);
        }
    }
    tk->n_classes = n_classes;
    tk->classes = xmalloc((size_t)n_classes * sizeof(uint32_t));
    for (int i = 0; i < n_classes; i++, off += 4) {
        uint32_t c = rd_u32(b + off), cp = c & 0xffffff, prev = i ? tk->classes[i - 1] & 0xffffff : 0;
        if ((c >> 24) > 2 || cp > 0x10ffff || (i == 0 ? cp != 0 : cp <= prev)) {
            die("%s: character class %d (0x%08x) out of range or out of order", path, i, c);
        }
        tk->classes[i] = c;
    }
    int byte_level = tk->flags & TF_BYTE_LEVEL;
    if ((byte_level != 0) != (n_classes > 0) || (byte_level && (tk->flags & (TF_BYTE_FALLBACK | TF_COLLAPSE)))) {
        die("%s: flags=%d and %d character classes do not go together (byte-level vocabularies, and only they, "
            "have classes, and no byte fallback or collapsing)", path, tk->flags, n_classes);
    }
}

static int cmp_special(const void *a, const void *b) {  // longest first, then lowest id
    const int *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0] ? -1 : 1) : (x[1] > y[1]) - (x[1] < y[1]);
}

static void build_tokenizer(Tokenizer *tk, const char *path, int vocab_size) {
    memset(tk, 0, sizeof(*tk));
    size_t size;
    int fd = open_regular(path, "tokenizer", &size);
    unsigned char *b = tk->file = xmalloc(size + 1);  // held in tk: an error exit leaves nothing unreachable
    read_fully(fd, b, size, 0, path);
    close(fd);
    int n = vocab_size;
    tk->vocab_size = n;
    tk->vocab = xmalloc(n * sizeof(char *));
    tk->len = xmalloc(n * sizeof(int));
    tk->scores = xmalloc(n * sizeof(float));
    tk->type = xmalloc(n);
    tk->byte_val = xmalloc(n * sizeof(short));
    tk->data = xmalloc(size + n);  // the texts, NUL-terminated right behind each other; they never grow
    unsigned char *in_text = tk->in_text = xcalloc(n, 1);
    if (size >= 4 && rd_u32(b) == TOK_MAGIC) { read_storyllama(tk, b, size, path); } else { read_llama2c(tk, b, size, path); }
    free(b);
    tk->file = NULL;
    // lookups: <0xHH> pieces, normal pieces (what BPE merges into), special tokens, ranked merges
    for (int i = 0; i < 256; i++) { tk->byte_id[i] = -1; }
    tk->table_size = 1;
    while (tk->table_size < 2 * n) { tk->table_size *= 2; }
    tk->table = xmalloc(tk->table_size * sizeof(int));
    for (int i = 0; i < tk->table_size; i++) { tk->table[i] = -1; }
    int *order = xmalloc((size_t)2 * n * sizeof(int));  // (length, id) pairs of the special tokens
    for (int id = 0; id < n; id++) {
        int bv = tk->type[id] == TK_BYTE ? parse_byte_piece(tk->vocab[id], tk->len[id]) : -1;
        tk->byte_val[id] = (short)bv;
        if (bv >= 0 && tk->byte_id[bv] < 0) { tk->byte_id[bv] = id; }
        if (in_text[id] && tk->len[id] > 0) {
            order[2 * tk->n_special] = tk->len[id];
            order[2 * tk->n_special++ + 1] = id;
            tk->special_lead[(unsigned char)tk->vocab[id][0]] = 1;
        }
        if (tk->type[id] != TK_NORMAL || tk->len[id] == 0) { continue; }
        tk->max_len = tk->len[id] > tk->max_len ? tk->len[id] : tk->max_len;
        uint32_t mask = tk->table_size - 1, i = hash_bytes(tk->vocab[id], tk->len[id]) & mask;
        int dup = 0;
        for (; tk->table[i] >= 0; i = (i + 1) & mask) {
            int o = tk->table[i];
            if (tk->len[o] == tk->len[id] && memcmp(tk->vocab[o], tk->vocab[id], tk->len[id]) == 0) { dup = 1; break; }
        }
        if (!dup) { tk->table[i] = id; }  // the first of duplicate pieces wins
    }
    qsort(order, tk->n_special, 2 * sizeof(int), cmp_special);
    tk->special = xmalloc((tk->n_special + 1) * sizeof(int));
    for (int i = 0; i < tk->n_special; i++) { tk->special[i] = order[2 * i + 1]; }
    free(order);
    free(in_text);
    tk->in_text = NULL;
    tk->merge_table_size = 1;
    while (tk->merge_table_size < 2 * tk->n_merges) { tk->merge_table_size *= 2; }
    tk->merge_table = xmalloc(tk->merge_table_size * sizeof(int));
    for (int i = 0; i < tk->merge_table_size; i++) { tk->merge_table[i] = -1; }
    for (int r = 0; r < tk->n_merges; r++) {
        int a = tk->merges[3 * r], c = tk->merges[3 * r + 1];
        uint32_t mask = tk->merge_table_size - 1, i = hash_pair(a, c) & mask;
        while (tk->merge_table[i] >= 0 && !(tk->merges[3 * tk->merge_table[i]] == a && tk->merges[3 * tk->merge_table[i] + 1] == c)) {
            i = (i + 1) & mask;
        }
        if (tk->merge_table[i] < 0) { tk->merge_table[i] = r; }  // the lowest rank of a repeated pair wins
    }
}

static void free_tokenizer(Tokenizer *tk) {
    free(tk->vocab); free(tk->len); free(tk->scores); free(tk->type); free(tk->byte_val); free(tk->table);
    free(tk->merges); free(tk->merge_table); free(tk->special); free(tk->classes); free(tk->data);
}

// sentencepiece's whole-text normalisation: "▁" (U+2581) and ' ' are the same symbol; with
// TF_COLLAPSE, leading spaces are dropped, runs of spaces become one and trailing ones go; with
// PREFIX_TEXT a dummy space is prefixed to any non-empty text. out needs strlen(text) + 2 bytes.
static int squeeze(const Tokenizer *tk, const char *text, char *out) {
    int n = 0, collapse = tk->flags & TF_COLLAPSE;
    const unsigned char *p = (const unsigned char *)text;
    if (collapse) { while (*p == ' ') { p++; } }
    if (*p == '\0') { return 0; }
    if (tk->prefix == PREFIX_TEXT) { out[n++] = ' '; }
    int prev_space = collapse;  // the dummy prefix counts as a space
    for (; *p; p++) {
        if (*p == ' ') {
            if (!prev_space) { out[n++] = ' '; }
            prev_space = collapse;
        } else if (p[0] == 0xE2 && p[1] == 0x96 && p[2] == 0x81) {
            out[n++] = ' ';  // a literal "▁" is a space to the pieces, but not to the collapsing
            prev_space = 0;
            p += 2;
        } else {
            out[n++] = (char)*p;
            prev_space = 0;
        }
    }
    if (collapse) { while (n > 0 && out[n - 1] == ' ') { n--; } }
    return n;
}

static int utf8_len(const unsigned char *s, int n) {
    // length of the well-formed UTF-8 character at s, or 1 for a stray byte
    int len = s[0] < 0x80 ? 1 : (s[0] >> 5) == 0x6 ? 2 : (s[0] >> 4) == 0xE ? 3 : (s[0] >> 3) == 0x1E ? 4 : 1;
    if (len > n) { return 1; }
    for (int i = 1; i < len; i++) { if ((s[i] & 0xC0) != 0x80) { return 1; } }
    return len;
}

// GPT-2 split class of the character at s: -1 whitespace (Unicode White_Space, the \s of HF's regex
// engine), else 0 other, 1 letter, 2 number from the file's table; *n = its length in bytes
static int char_class(const Tokenizer *tk, const unsigned char *s, int avail, int *n) {
    int len = utf8_len(s, avail);
    *n = len;
    if (len == 1 && s[0] >= 0x80) { return 0; }  // a stray byte: neither letter, number nor space
    uint32_t c = len == 1 ? s[0] : s[0] & (0x7f >> len);
    for (int i = 1; i < len; i++) { c = c << 6 | (s[i] & 0x3f); }
    if ((c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
        c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000) { return -1; }
    int lo = 0, hi = tk->n_classes - 1;  // the last class that starts at or before c (the first starts at 0)
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((tk->classes[mid] & 0xffffff) <= c) { lo = mid; } else { hi = mid - 1; }
    }
    return (int)(tk->classes[lo] >> 24);
}

// length of the word at s by GPT-2's pre-tokenizer regex, written out by hand:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
static int gpt2_word(const Tokenizer *tk, const unsigned char *s, int n) {
    static const char *suffix[7] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (s[0] == '\'') {
        for (int k = 0; k < 7; k++) {
            int l = (int)strlen(suffix[k]);
            if (1 + l <= n && memcmp(s + 1, suffix[k], l) == 0) { return 1 + l; }
        }
    }
    int j = s[0] == ' ' && n > 1, len, e;
    int c = char_class(tk, s + j, n - j, &len);
    if (c >= 0) {  // an optional space, then a run of letters, of numbers, or of other non-space characters
        for (e = j + len; e < n && char_class(tk, s + e, n - e, &len) == c; e += len) {}
        return e;
    }
    int last = 0;  // whitespace: all of it at the end of the text, else all but its last character if 2+
    for (e = 0; e < n && char_class(tk, s + e, n - e, &len) < 0; e += len) { last = e; }
    return e < n && last > 0 ? last : e;
}

typedef struct { int start, len, prev, next, id, word; } Symbol;  // a span of a segment; merges stay inside a word
typedef struct { float score; int left, right, len, id; } Merge;   // a candidate pair of symbols

static int merge_before(const Merge *a, const Merge *b) {  // best score (or rank) first, then leftmost
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(Merge *heap, int *n, Merge m) {
    int i = (*n)++;
    while (i > 0 && merge_before(&m, &heap[(i - 1) / 2])) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
    heap[i] = m;
}

static Merge heap_pop(Merge *heap, int *n) {
    Merge top = heap[0], last = heap[--(*n)];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= *n) { break; }
        if (child + 1 < *n && merge_before(&heap[child + 1], &heap[child])) { child++; }
        if (!merge_before(&heap[child], &last)) { break; }
        heap[i] = heap[child];
        i = child;
    }
    if (*n > 0) { heap[i] = last; }
    return top;
}

// queue the pair (symbol l, its next) if it may merge: by score, into the normal piece their union
// spells (sentencepiece); or by rank, when (left id, right id) is a merge (Hugging Face)
static void push_pair(const Tokenizer *tk, const char *seg, const Symbol *sym, int l, Merge *heap, int *nh) {
    if (l < 0 || sym[l].next < 0 || sym[sym[l].next].word != sym[l].word) { return; }
    int r = sym[l].next, len = sym[l].len + sym[r].len;
    if (tk->n_merges > 0) {
        int rank = merge_rank(tk, sym[l].id, sym[r].id);
        if (rank >= 0) { Merge m = {-(float)rank, l, r, len, tk->merges[3 * rank + 2]}; heap_push(heap, nh, m); }
    } else {
        int id = lookup(tk, seg + sym[l].start, len);
        if (id >= 0) { Merge m = {tk->scores[id], l, r, len, id}; heap_push(heap, nh, m); }
    }
}

static void add_symbol(Symbol *sym, int *ns, int start, int len, int id, int word) {
    sym[*ns] = (Symbol){start, len, *ns - 1, -1, id, word};
    if (*ns > 0) { sym[*ns - 1].next = *ns; }
    (*ns)++;
}

static int all_bytes(const Tokenizer *tk, const char *s, int n) {  // byte fallback can spell s
    if (!(tk->flags & TF_BYTE_FALLBACK)) { return 0; }
    for (int i = 0; i < n; i++) { if (tk->byte_id[(unsigned char)s[i]] < 0) { return 0; } }
    return 1;
}

// BPE on one segment (m bytes at seg), its ids written to out; returns how many. Words come from the
// pre-tokenizer (GPT-2's split, a word per space, or the whole segment). Symbols start as characters
// (bytes when byte-level); with ranked merges a character the vocab lacks becomes its <0xHH> pieces
// (byte fallback), else <unk> (consecutive ones fused with TF_FUSE_UNK), else nothing. Then the best
// pair merges again and again, leftmost on ties; with merges by score, leftovers not in the vocab
// become their bytes or <unk> at the end (sentencepiece). A heap of pairs keeps it O(n log n).
static int bpe_segment(const Tokenizer *tk, const char *seg, int m, Symbol *sym, Merge *heap, int *out) {
    int ns = 0, ranked = tk->n_merges > 0;
    for (int ws = 0, word = 0; ws < m; word++) {
        int we = m;
        if (tk->flags & TF_BYTE_LEVEL) {
            we = ws + gpt2_word(tk, (const unsigned char *)seg + ws, m - ws);
        } else if (tk->flags & TF_SPLIT_SPACES) {
            for (we = ws + 1; we < m && seg[we] != ' '; we++) {}
            if (seg[ws] != ' ') { for (we = ws; we < m && seg[we] != ' '; we++) {} }
        }
        int whole = ranked && (tk->flags & TF_IGNORE_MERGES) ? lookup(tk, seg + ws, we - ws) : -1;
        if (whole >= 0) { add_symbol(sym, &ns, ws, we - ws, whole, word); ws = we; continue; }
        for (int i = ws; i < we;) {
            int k = (tk->flags & TF_BYTE_LEVEL) ? 1 : utf8_len((const unsigned char *)seg + i, we - i);
            int id = ranked ? lookup(tk, seg + i, k) : -1;
            if (!ranked || id >= 0) {
                add_symbol(sym, &ns, i, k, id, word);
            } else if (all_bytes(tk, seg + i, k)) {
                for (int j = 0; j < k; j++) { add_symbol(sym, &ns, i + j, 1, tk->byte_id[(unsigned char)seg[i + j]], word); }
            } else if (tk->unk >= 0) {
                Symbol *last = ns > 0 ? &sym[ns - 1] : NULL;
                if ((tk->flags & TF_FUSE_UNK) && last && last->id == tk->unk && last->word == word && last->start + last->len == i) {
                    last->len += k;
                } else {
                    add_symbol(sym, &ns, i, k, tk->unk, word);
                }
            }
            i += k;
        }
        ws = we;
    }
    int nh = 0, n = 0;
    for (int i = 0; i + 1 < ns; i++) { push_pair(tk, seg, sym, i, heap, &nh); }
    while (nh > 0) {
        Merge mg = heap_pop(heap, &nh);
        Symbol *a = &sym[mg.left], *b = &sym[mg.right];
        // stale: one side was merged away since this pair was queued
        if (a->len == 0 || b->len == 0 || a->next != mg.right || a->len + b->len != mg.len) { continue; }
        a->len += b->len;
        a->id = mg.id;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) { sym[b->next].prev = mg.left; }
        push_pair(tk, seg, sym, a->prev, heap, &nh);
        push_pair(tk, seg, sym, mg.left, heap, &nh);
    }
    for (int i = ns > 0 ? 0 : -1; i >= 0; i = sym[i].next) {
        const char *s = seg + sym[i].start;
        int id = ranked ? sym[i].id : lookup(tk, s, sym[i].len);
        if (id >= 0) { out[n++] = id; continue; }
        if (all_bytes(tk, s, sym[i].len)) {
            for (int j = 0; j < sym[i].len; j++) { out[n++] = tk->byte_id[(unsigned char)s[j]]; }
        } else if (tk->unk >= 0) {
            out[n++] = tk->unk;
        }
    }
    return n;
}

static int match_special(const Tokenizer *tk, const char *s, int n, int *len) {  // longest special token at s, or -1
    if (!tk->special_lead[(unsigned char)s[0]]) { return -1; }
    for (int k = 0; k < tk->n_special; k++) {
        int id = tk->special[k];
        if (tk->len[id] <= n && memcmp(tk->vocab[id], s, tk->len[id]) == 0) { *len = tk->len[id]; return id; }
    }
    return -1;
}

// text -> token ids (BOS first if bos and the vocabulary adds one), as sentencepiece or Hugging Face
// tokenizers would: whole-text normalisation (not byte-level), special tokens cut out wherever they
// appear (leftmost, longest), the dummy prefix per segment, then BPE. Returns a malloc'd array.
static int *encode(const Tokenizer *tk, const char *text, int bos, int *n_out) {
    size_t tlen = strlen(text);
    if (tlen > (size_t)INT_MAX / 8) { die("prompt of %zu bytes is too long", tlen); }
    char *norm = xmalloc(tlen + 2);
    int n = (int)tlen;
    if (tk->flags & TF_BYTE_LEVEL) { memcpy(norm, text, tlen); } else { n = squeeze(tk, text, norm); }
    char *seg = xmalloc((size_t)n + 2);
    Symbol *sym = xmalloc(((size_t)n + 2) * sizeof(Symbol));
    Merge *heap = xmalloc((3 * (size_t)n + 7) * sizeof(Merge));  // a segment's initial pairs + 2 per merge
    int *ids = xmalloc((3 * (size_t)n + 3) * sizeof(int));       // <= a byte each, a prefix per segment, BOS
    int k = 0;
    if (bos && (tk->flags & TF_ADD_BOS) && tk->bos >= 0) { ids[k++] = tk->bos; }
    for (int pos = 0; pos <= n;) {
        int start = pos, id = -1, slen = 0;
        while (start < n && (id = match_special(tk, norm + start, n - start, &slen)) < 0) { start++; }
        int seglen = start - pos, m = 0;
        assert(seglen >= 0);  // start begins at pos and only grows (gcc -O1 cannot see it and warns at the memcpy)
        int first_ok = tk->prefix == PREFIX_EVERY || (tk->prefix == PREFIX_FIRST && pos == 0);
        if (seglen > 0 && (tk->prefix == PREFIX_ALWAYS || (first_ok && norm[pos] != ' '))) { seg[m++] = ' '; }
        memcpy(seg + m, norm + pos, seglen);
        k += bpe_segment(tk, seg, m + seglen, sym, heap, ids + k);
        if (id >= 0) { ids[k++] = id; }
        pos = id >= 0 ? start + slen : n + 1;
    }
    free(norm); free(seg); free(sym); free(heap);
    *n_out = k;
    return ids;
}

// print the text of token `next` that follows token `prev` (-1: none): control tokens print nothing,
// <0xHH> pieces their byte, and the dummy prefix's space comes off the first piece of a text
static void print_piece(const Tokenizer *tk, int prev, int next) {
    const char *p = tk->vocab[next];
    int n = tk->len[next], b = tk->byte_val[next];
    if (tk->type[next] == TK_CONTROL) { return; }
    if (b >= 0) {
        // raw byte pieces: UTF-8 bytes and printable ASCII pass, control codes are dropped
        if (b >= 0x80 || isprint(b) || isspace(b)) { putchar(b); }
        return;
    }
    int start = prev < 0 || prev == tk->bos;
    if (start && tk->prefix != PREFIX_NONE && !(tk->flags & TF_BYTE_LEVEL) && n > 0 && p[0] == ' ') { p++, n--; }
    fwrite(p, 1, n, stdout);
}

// the model's and the tokenizer's identities: a tokenizer of another vocabulary is refused (both carry
// one and they differ); when only one of them carries one, a note says it could not be checked
static void check_identity(const Config *c, const Tokenizer *tk, const char *model_path, const char *tok_path) {
    static const unsigned char zero[32];
    int m = memcmp(c->vocab_id, zero, 32) != 0, t = memcmp(tk->identity, zero, 32) != 0;
    if (m && t && memcmp(c->vocab_id, tk->identity, 32) != 0) {
        die("%s is not the tokenizer of %s (vocabulary %02x%02x%02x%02x%02x%02x, the model's %02x%02x%02x%02x%02x%02x): "
            "use the model's own tokenizer (-z)", tok_path, model_path, tk->identity[0], tk->identity[1], tk->identity[2],
            tk->identity[3], tk->identity[4], tk->identity[5], c->vocab_id[0], c->vocab_id[1], c->vocab_id[2],
            c->vocab_id[3], c->vocab_id[4], c->vocab_id[5]);
    }
    if (m != t) {
        fprintf(stderr, "run: note: %s carries no vocabulary identity (an older file): cannot check that %s is %s's tokenizer\n",
                m ? tok_path : model_path, tok_path, model_path);
    }
}

// ----------------------------------------------------------------------------
// the sampler: exactly llama2.c's procedure and random stream, plus an optional top-k

typedef struct { float prob; int index; } ProbIndex;

typedef struct {
    int vocab_size;
    ProbIndex *probindex;         // (vocab_size) scratch for top-p / top-k
    float temperature;            // 0: greedy
    float topp;                   // nucleus mass; <= 0 or >= 1: off
    int topk;                     // keep the k most likely tokens; 0: off
    unsigned long long rng_state; // xorshift64* state
} Sampler;

static void build_sampler(Sampler *sp, int vocab_size, float temperature, float topp, int topk,
                          unsigned long long seed) {
    sp->vocab_size = vocab_size;
    sp->probindex = xmalloc(vocab_size * sizeof(ProbIndex));
    sp->temperature = temperature;
    sp->topp = topp;
    sp->topk = topk;
    sp->rng_state = seed;
}

static void free_sampler(Sampler *sp) { free(sp->probindex); }

static uint32_t random_u32(unsigned long long *state) {  // xorshift64*, the top 32 bits
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static void softmax(float *x, int n) {  // libm's expf and a serial sum: llama2.c's numbers exactly
    float mx = x[0];
    for (int i = 1; i < n; i++) { if (x[i] > mx) { mx = x[i]; } }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    for (int i = 0; i < n; i++) { x[i] /= sum; }
}

static int sample_mult(const float *probs, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probs[i];
        if (coin < cdf) { return i; }
    }
    return n - 1;  // rounding
}

// descending probability; equal ones by index, which is what llama2.c's stable glibc qsort gives
static int cmp_prob(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob != y->prob) { return x->prob > y->prob ? -1 : 1; }
    return (x->index > y->index) - (x->index < y->index);
}

// nucleus sampling from the first n0 entries of pi, sorted descending, holding `mass` in all
static int sample_nucleus(const ProbIndex *pi, int n0, float topp, float mass, float coin) {
    float cum = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cum += pi[i].prob;
        if (topp > 0 && topp < 1 && cum > topp * mass) { last = i; break; }
    }
    float r = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) { return pi[i].index; }
    }
    return pi[last].index;
}

static int sample_topp(const float *probs, int n, float topp, ProbIndex *pi, float coin) {
    // a token below (1 - topp) / (n - 1) can never be in the nucleus: sort only the others
    const float cutoff = (1.0f - topp) / (n - 1);
    int n0 = 0;
    for (int i = 0; i < n; i++) {
        if (probs[i] >= cutoff) { pi[n0].index = i; pi[n0].prob = probs[i]; n0++; }
    }
    if (n0 == 0) {
        // the cutoff argument needs topp >= 1/n: below that a flat distribution can leave no token
        // above it (llama2.c then reads pi[-1]), so sort them all
        for (int i = 0; i < n; i++) { pi[i].index = i; pi[i].prob = probs[i]; }
        n0 = n;
    }
    qsort(pi, n0, sizeof(ProbIndex), cmp_prob);
    return sample_nucleus(pi, n0, topp, 1.0f, coin);
}

static int sample_topk(const float *probs, int n, int k, float topp, ProbIndex *pi, float coin) {
    // quickselect the k most likely to the front, sort them, then top-p within them
    for (int i = 0; i < n; i++) { pi[i].index = i; pi[i].prob = probs[i]; }
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        ProbIndex pivot = pi[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (cmp_prob(&pi[i], &pivot) < 0) { i++; }
            while (cmp_prob(&pi[j], &pivot) > 0) { j--; }
            if (i <= j) { ProbIndex tmp = pi[i]; pi[i] = pi[j]; pi[j] = tmp; i++; j--; }
        }
        if (k - 1 <= j) { hi = j; } else if (k - 1 >= i) { lo = i; } else { break; }
    }
    qsort(pi, k, sizeof(ProbIndex), cmp_prob);
    float mass = 0.0f;
    for (int i = 0; i < k; i++) { mass += pi[i].prob; }
    return sample_nucleus(pi, k, topp, mass, coin);
}

// The next token, or -1 when the logits are not all finite (a diverged or broken model: the
// caller says so). On finite logits every step is llama2.c's, so the same seed gives its tokens.
static int sample(Sampler *sp, float *logits) {
    int n = sp->vocab_size;
    float amax = 0.0f;
    int finite = 1;
    for (int i = 0; i < n; i++) {  // no early exit, so that this vectorises: NaN fails a <= FLT_MAX
        float a = fabsf(logits[i]);
        finite &= a <= FLT_MAX;
        amax = a > amax ? a : amax;
    }
    if (!finite) { return -1; }
    if (sp->temperature == 0.0f) { return argmax(logits, n); }
    if (isinf(amax / sp->temperature)) {
        // a temperature so small that logits / t overflows: the same distribution, as (logit - max) / t
        float mx = logits[argmax(logits, n)];
        for (int i = 0; i < n; i++) { logits[i] = (logits[i] - mx) / sp->temperature; }
    } else {
        for (int i = 0; i < n; i++) { logits[i] /= sp->temperature; }
    }
    softmax(logits, n);
    float coin = random_f32(&sp->rng_state);  // one draw per sampled token, as in llama2.c
    if (sp->topk > 0 && sp->topk < n) { return sample_topk(logits, n, sp->topk, sp->topp, sp->probindex, coin); }
    if (sp->topp <= 0 || sp->topp >= 1) { return sample_mult(logits, n, coin); }
    return sample_topp(logits, n, sp->topp, sp->probindex, coin);
}

// ----------------------------------------------------------------------------
// the modes: generate, chat, and two for tests and tools (logits, tokenize)

// sample(), or one line naming the model and the position whose logits are NaN or infinite
static int sample_or_die(Sampler *sp, float *logits, const Transformer *t, int pos) {
    int next = sample(sp, logits);
    if (next < 0) {
        int nan = 0;
        for (int i = 0; i < sp->vocab_size; i++) { nan |= isnan(logits[i]); }
        die("%s: the model produced %s logits at position %d: is the checkpoint diverged?", t->path,
            nan ? "NaN" : "infinite", pos);
    }
    return next;
}

static void check_prompt_fits(int n_tokens, const Config *c) {
    if (n_tokens > c->seq_len) {
        die("prompt is %d tokens (with BOS), longer than the model's context of %d tokens: shorten -i", n_tokens,
            c->seq_len);
    }
}

static int ends_story(const Tokenizer *tk, int id) { return id == tk->bos || id == tk->eos || id == tk->end; }

static void generate(const Transformer *t, RunState *s, const Tokenizer *tk, Sampler *sp, const char *prompt, int steps,
                     const char *tok_path) {
    int n_prompt;
    int *prompt_tokens = encode(tk, prompt ? prompt : "", 1, &n_prompt);
    if (n_prompt == 0 && tk->bos < 0) { die("%s has no BOS token to start a story with: give a prompt (-i)", tok_path); }
    if (n_prompt == 0) { prompt_tokens[n_prompt++] = tk->bos; }  // a vocabulary that adds no BOS to prompts
    check_prompt_fits(n_prompt, &t->c);
    // the prompt (as much of it as -n steps reach) goes through the model in batches; then the
    // sampler picks each next token from the logits of the one before
    int n_fill = n_prompt < steps ? n_prompt : steps;
    if (prompt_tokens[0] != tk->bos) { print_piece(tk, -1, prompt_tokens[0]); }
    double t0 = time_s();
    float *logits = forward_tokens(t, s, prompt_tokens, n_fill, 0, 0);
    double prefill = time_s() - t0;
    for (int i = 1; i < n_fill; i++) { print_piece(tk, prompt_tokens[i - 1], prompt_tokens[i]); }
    flush_stdout();
    int token = prompt_tokens[n_fill - 1], pos = n_fill;
    double start = 0.0;  // the prompt's pass, the first, pays for the page faults: not timed
    while (n_fill == n_prompt) {
        int next = sample_or_die(sp, logits, t, pos - 1);  // the logits of position pos - 1
        if (ends_story(tk, next)) {  // BOS, EOS or the end-of-story token
            if (pos == 1 && prompt_tokens[0] == tk->bos) {
                // nothing printed: say why the story is empty (as in llama2.c, it is not resampled)
                fprintf(stderr, "run: note: the story ended before it began: the first token sampled was %s "
                        "(try another seed -s, or a prompt -i)\n",
                        next == tk->eos ? "EOS" : next == tk->bos ? "BOS" : "the end-of-story token");
            }
            break;
        }
        print_piece(tk, token, next);
        flush_stdout();
        token = next;
        if (pos >= steps) { break; }
        if (start == 0.0) { start = time_s(); }
        logits = forward(t, s, token, pos++);
    }
    printf("\n");
    flush_stdout();  // the story's last line before the stats, when both go to one pipe
    if (n_fill > 1) { fprintf(stderr, "prompt: %d tokens, %f tok/s\n", n_fill, n_fill / prefill); }
    if (start > 0.0) { fprintf(stderr, "achieved tok/s: %f\n", (pos - n_fill) / (time_s() - start)); }
    free(prompt_tokens);
}

// One line from stdin without its newline; NULL at end of input. A line of more than max bytes (the
// tokens left times the longest token's bytes: no tokenization of it fits) is refused while it is
// read, so that neither memory nor time grows with what stdin sends. Counted as typed: a vocabulary
// that collapses runs of spaces could have made fewer tokens of it.
static char *read_line(const char *guide, size_t max, int left) {
    printf("%s", guide);
    flush_stdout();
    size_t n = 0, cap = 256;
    char *line = xmalloc(cap);
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n') {
        if (n == max) {
            die("stdin: a line of more than %zu bytes cannot fit the %d tokens left in the context", max, left);
        }
        if (n + 1 == cap) {
            cap *= 2;
            line = realloc(line, cap);
            if (!line) { die("out of memory reading a line of stdin"); }
        }
        line[n++] = (char)ch;
    }
    if (ch == EOF && n == 0) { free(line); return NULL; }
    line[n] = '\0';
    return line;
}

static char *strdup_or_empty(const char *s) {
    size_t n = s ? strlen(s) : 0;
    char *d = xmalloc(n + 1);
    memcpy(d, s ? s : "", n);
    d[n] = '\0';
    return d;
}

// Llama 2 chat: [INST] <<SYS>> system <</SYS>> user [/INST], the assistant answers until EOS
static void chat(const Transformer *t, RunState *s, const Tokenizer *tk, Sampler *sp, const char *cli_user,
                 const char *cli_system, int steps) {
    int *prompt_tokens = NULL, n_prompt = 0, user_idx = 0, user_turn = 1, next = 0, token, pos = 0;
    size_t widest = 1;  // a token's text takes at most this many bytes: the bound of a line that can fit
    for (int i = 0; i < tk->vocab_size; i++) { widest = (size_t)tk->len[i] > widest ? (size_t)tk->len[i] : widest; }
    while (pos < steps) {
        if (user_turn) {
            char *system = NULL, *user;
            int left = s->max_pos - pos;
            size_t max = (size_t)left * widest;
            if (pos == 0) {
                system = cli_system ? strdup_or_empty(cli_system) : read_line("Enter system prompt (optional): ", max, left);
                if (!system) { break; }
            }
            user = (pos == 0 && cli_user) ? strdup_or_empty(cli_user) : read_line("User: ", max, left);
            if (!user) { free(system); break; }
            size_t need = strlen(user) + (system ? strlen(system) : 0) + 64;
            char *rendered = xmalloc(need);
            if (system && system[0]) {
                snprintf(rendered, need, "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]", system, user);
            } else {
                snprintf(rendered, need, "[INST] %s [/INST]", user);
            }
            free(prompt_tokens);
            prompt_tokens = encode(tk, rendered, 1, &n_prompt);
            free(rendered); free(user); free(system);
            if (pos + n_prompt > s->max_pos) {
                die("conversation of %d tokens no longer fits the context of %d tokens (-n)", pos + n_prompt, s->max_pos);
            }
            user_idx = 0;
            user_turn = 0;
            printf("Assistant: ");
        }
        token = user_idx < n_prompt ? prompt_tokens[user_idx++] : next;
        if (token == tk->eos) { user_turn = 1; }
        float *logits = forward(t, s, token, pos);
        next = sample_or_die(sp, logits, t, pos);
        pos++;
        if (user_idx >= n_prompt && next != tk->eos) { print_piece(tk, token, next); flush_stdout(); }
        if (next == tk->eos) { printf("\n"); }
    }
    printf("\n");
    flush_stdout();
    if (pos >= steps) {  // the user's next line would not be read (it would go to the shell): an error, not an end
        if (steps < t->c.seq_len) {
            die("-n: the conversation reached its %d tokens%s: start again with a larger -n (the context holds %d)",
                steps, next == tk->eos ? "" : " in the middle of a reply", t->c.seq_len);
        }
        die("the conversation filled the model's context of %d tokens%s", steps,
            next == tk->eos ? "" : " in the middle of a reply");
    }
    free(prompt_tokens);
}

// -m logits: every position's logits for the token ids in -i, as raw fp32 (n, vocab_size) in -o
// A regular file (or a new one) is replaced through a temp file beside it and a rename, so it is
// never half written; a symlink is followed and its target replaced the same way (the link stays);
// a device or FIFO (/dev/stdout, a pipe) is written in place: renaming over it would replace it.
static void write_logits(const Transformer *t, RunState *s, const int *ids, int n, const char *path) {
    struct stat st;
    char *target = NULL;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && !(target = realpath(path, NULL))) {
        die("-o %s: a symlink to nowhere: %s", path, strerror(errno));
    }
    const char *dest = target ? target : path;
    int exists = stat(dest, &st) == 0, in_place = exists && !S_ISREG(st.st_mode);
    if (exists && S_ISDIR(st.st_mode)) { die("-o %s: is a directory, expected a file name", path); }
    size_t plen = strlen(dest);
    char *tmp = xmalloc(plen + 32);
    snprintf(tmp, plen + 32, "%s.tmp%ld", dest, (long)getpid());
    const char *out = in_place ? dest : tmp;
    FILE *f = fopen(out, "wb");
    if (!f) { die("cannot write %s: %s", out, strerror(errno)); }
    for (int pos = 0; pos < n; pos += s->batch) {
        int nb = n - pos < s->batch ? n - pos : s->batch;
        float *logits = forward_tokens(t, s, ids + pos, nb, pos, 1);
        size_t count = (size_t)nb * t->c.vocab_size;
        if (fwrite(logits, sizeof(float), count, f) != count) {
            if (!in_place) { remove(tmp); }
            die("write to %s failed: %s", out, strerror(errno));
        }
    }
    if (fclose(f) != 0 || (!in_place && rename(tmp, dest) != 0)) {
        if (!in_place) { remove(tmp); }
        die("cannot write %s: %s", dest, strerror(errno));
    }
    free(tmp);
    free(target);
}

static int *parse_ids(const char *text, int vocab_size, int *n_out) {
    size_t cap = strlen(text) / 2 + 1;
    int *ids = xmalloc(cap * sizeof(int));
    int n = 0;
    const char *p = text;
    for (;;) {
        while (isspace((unsigned char)*p) || *p == ',') { p++; }
        if (!*p) { break; }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab_size) {
            die("-i: with -m logits, expected token ids in 0..%d separated by spaces, got '%.20s'", vocab_size - 1, p);
        }
        ids[n++] = (int)v;
        p = end;
    }
    if (n == 0) { die("-i: with -m logits, give at least one token id"); }
    *n_out = n;
    return ids;
}

// -m score: how well the model predicts a text file, in bits per byte. The file holds stories with
// "<|endoftext|>" between them (TinyStories' text files; a file without one is one story); each is
// stripped of the whitespace around it, encoded with BOS, and run from position 0, every token after
// BOS a target. A story longer than the context runs as windows of seq_len tokens, each from position
// 0 and starting with the last token of the window before (a stride of seq_len - 1), so every token is
// predicted once. Bits per byte: the targets' summed -log2 p over the stories' UTF-8 bytes.
#define STORY_SEP "<|endoftext|>"

// -ln p(target) from logits (n): the log of the softmax, with exp_fast in 16 lanes
static double neg_log_prob(const float *logits, int n, int target) {
    float lane[LANES], mx = logits[0], sum = 0.0f;
    for (int j = 0; j < n; j++) { mx = logits[j] > mx ? logits[j] : mx; }
    for (int k = 0; k < LANES; k++) { lane[k] = 0.0f; }
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        for (int k = 0; k < LANES; k++) { lane[k] += exp_fast(logits[j + k] - mx); }
    }
    for (; j < n; j++) { sum += exp_fast(logits[j] - mx); }
    for (int k = 0; k < LANES; k++) { sum += lane[k]; }
    return log((double)sum) - (double)(logits[target] - mx);
}

// the summed -ln p of ids[1..n) after what precedes each, in windows of the context (see above)
static double story_nats(const Transformer *t, RunState *s, const int *ids, int n) {
    int L = s->max_pos, V = t->c.vocab_size;
    double nats = 0.0;
    for (int w0 = 0; w0 + 1 < n; w0 += L - 1) {
        int inputs = (n - w0 < L ? n - w0 : L) - 1;  // the window's tokens that have a target after them
        for (int pos = 0; pos < inputs; pos += s->batch) {
            int nb = inputs - pos < s->batch ? inputs - pos : s->batch;
            const float *logits = forward_tokens(t, s, ids + w0 + pos, nb, pos, 1);
            for (int b = 0; b < nb; b++) { nats += neg_log_prob(logits + (size_t)b * V, V, ids[w0 + pos + b + 1]); }
        }
    }
    return nats;
}

static void score_file(const Transformer *t, RunState *s, const Tokenizer *tk, const char *path) {
    size_t size;
    int fd = open_regular(path, "text file to score", &size);
    char *text = xmalloc(size + 1);
    read_fully(fd, (unsigned char *)text, size, 0, path);
    close(fd);
    text[size] = '\0';
    if (strlen(text) != size) { die("%s: holds a NUL byte, expected UTF-8 text", path); }
    if (s->max_pos < 2) { die("%s: a context of %d tokens cannot score text (at least 2)", t->path, s->max_pos); }
    long long bytes = 0, targets = 0;
    int stories = 0;
    double nats = 0.0, t0 = time_s(), shown = t0;
    for (char *p = text; *p;) {
        char *end = strstr(p, STORY_SEP), *next = end ? end + strlen(STORY_SEP) : p + strlen(p);
        if (!end) { end = next; }
        while (p < end && isspace((unsigned char)*p)) { p++; }
        while (end > p && isspace((unsigned char)end[-1])) { end--; }
        if (end > p) {
            char saved = *end;
            *end = '\0';
            int n;
            int *ids = encode(tk, p, 1, &n);
            *end = saved;
            nats += story_nats(t, s, ids, n);
            free(ids);
            stories++, bytes += end - p, targets += n - 1;
            if (time_s() - shown >= 5.0) {
                shown = time_s();
                fprintf(stderr, "score: %d stories, %.0f%% of %s, %.0f tok/s\n", stories, 100.0 * (next - text) / size,
                        path, targets / (shown - t0));
            }
        }
        p = next;
    }
    double secs = time_s() - t0;
    if (targets == 0) { die("%s: no text to score (expected stories separated by %s)", path, STORY_SEP); }
    printf("%.6f bits per byte, %.6f nats per token: %d stories, %lld bytes, %lld tokens scored, %.1f tok/s\n",
           nats / log(2.0) / bytes, nats / targets, stories, bytes, targets, targets / secs);
    flush_stdout();
    free(text);
}

// A header can claim a context (max_seq_len < 2^24) that no model of its size was trained for, and
// -n 0 sizes the KV cache by it. model.py's rule, which every Python reader applies to the header
// (MAX_CACHE_BYTES there), restated for the steps of this run: a cache of fp32 k and v over 1 GiB that
// is also more than 64 times the model's weights (as fp32) is taken for a corrupt header (a real
// model's full-context cache is a fraction of its weights) and refused before it is allocated; -n lower
// still runs such a file. (q8_0 and q4 models keep an fp16 cache: half of what the rule counts.)
static void check_cache_size(const Transformer *t, int steps) {
    const Config *c = &t->c;
    double kv = c->kv_dim, dim = c->dim, hidden = c->hidden_dim;
    double weights = 4.0 * ((double)c->vocab_size * dim * (c->shared ? 1 : 2) + dim +
                            c->n_layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim));
    double bytes = 2.0 * c->n_layers * steps * kv * 4;
    if (bytes > (double)(1 << 30) && bytes > 64.0 * weights) {
        die("%s: max_seq_len=%d: a KV cache for %d steps would take %.1f GB, %.0f times the model's weights: a "
            "corrupt header? (-n sets fewer steps)", t->path, c->seq_len, steps, bytes / 1e9, bytes / weights);
    }
}

// ----------------------------------------------------------------------------
// command line

static void usage(void) {
    fprintf(stderr,
        "Usage:   run <checkpoint> [options]\n"
        "Example: run model.bin -n 256 -i \"Once upon a time\"\n"
        "Options:\n"
        "  -t <float>  temperature in [0, 3.4e38], default 1.0 (0 = greedy)\n"
        "  -p <float>  p value in top-p (nucleus) sampling in [0,1], default 0.9 (0 or 1 = off)\n"
        "  -k <int>    top-k: sample among the k most likely tokens, default 0 (off); -p applies within them\n"
        "  -s <int>    random seed, default time(NULL)\n"
        "  -n <int>    number of steps to run for, default 256; 0 = the model's max_seq_len\n"
        "  -i <string> input prompt (-m logits: token ids separated by spaces)\n"
        "  -z <string> tokenizer .bin; default: tok<vocab_size>.bin, then tokenizer.bin,\n"
        "              looked for next to the checkpoint, then in the current directory\n"
        "  -e <string> the end-of-story token besides BOS and EOS, by its text; default: the\n"
        "              tokenizer's (e.g. <|end_story|>); \"\" for none\n"
        "  -m <string> mode: generate|chat (default generate); score: bits per byte of the text\n"
        "              file -i (stories separated by <|endoftext|>); logits|tokenize for tests and\n"
        "              tools: logits writes fp32 logits (n_tokens, vocab_size) of the ids in -i to -o,\n"
        "              tokenize prints the ids of -i (no BOS) on one line\n"
        "  -y <string> (optional) system prompt in chat mode\n"
        "  -o <string> output file for -m logits\n"
        "  -w <string> instruct prompt, in place of -i: the words the story should use, e.g. \"dog, run, happy\"\n"
        "  -f <string> instruct prompt: its features, e.g. \"Dialogue, BadEnding\"\n"
        "  -a <string> instruct prompt: its summary, what the story is about\n");
}

// The prompt of a TinyStoriesInstruct record: "Words: w\nFeatures: f\nSummary: s\nStory:" with the
// fields given (NULL: left out), each text as it is. This restates instruct.py's prompt_text, where the
// record format is defined once; sample.py's --words, --features and --summary build the same text.
static char *instruct_prompt(const char *words, const char *features, const char *summary) {
    const char *flags[3] = {"-w", "-f", "-a"}, *names[3] = {"Words", "Features", "Summary"};
    const char *texts[3] = {words, features, summary};
    size_t n = strlen("Story:") + 1;
    for (int i = 0; i < 3; i++) {
        if (texts[i] && strpbrk(texts[i], "\r\n")) { die("%s: '%s': a field is one line of text", flags[i], texts[i]); }
        if (texts[i]) { n += strlen(names[i]) + 2 + strlen(texts[i]) + 1; }
    }
    char *prompt = xmalloc(n), *end = prompt;
    for (int i = 0; i < 3; i++) {
        if (texts[i]) { end += sprintf(end, "%s: %s\n", names[i], texts[i]); }
    }
    strcpy(end, "Story:");
    return prompt;
}

static float parse_float(const char *flag, const char *v, float lo, float hi, const char *expect) {
    char *end;
    errno = 0;
    float f = strtof(v, &end);
    int underflow = errno == ERANGE && fabsf(f) <= FLT_MIN;  // 1e-45: a float as near as any, not an error
    if (end == v || *end || (errno && !underflow) || !isfinite(f) || f < lo || f > hi) {
        die("%s expects %s, got '%s'", flag, expect, v);
    }
    return f;
}

static long long parse_int(const char *flag, const char *v, long long lo, long long hi, const char *expect) {
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || errno || n < lo || n > hi) { die("%s expects %s, got '%s'", flag, expect, v); }
    return n;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// tok<vocab>.bin then tokenizer.bin, beside the checkpoint, then in the current directory. This
// restates the .bin half of the vocabulary rule, which is written once in dataloader.py: a custom
// vocabulary of N tokens is tok{N}, Meta's Llama 2 vocabulary keeps llama2.c's name tokenizer.
static char *find_tokenizer(const char *checkpoint, int vocab_size) {
    const char *slash = strrchr(checkpoint, '/');
    int dirlen = slash ? (int)(slash - checkpoint) + 1 : 0;
    char names[2][32];
    snprintf(names[0], sizeof(names[0]), "tok%d.bin", vocab_size);
    snprintf(names[1], sizeof(names[1]), "tokenizer.bin");
    for (int n = 0; n < 2; n++) {
        for (int d = 0; d < 2; d++) {
            int dl = d == 0 ? dirlen : 0;
            char *path = xmalloc(dl + strlen(names[n]) + 1);
            memcpy(path, checkpoint, dl);
            strcpy(path + dl, names[n]);
            if (file_exists(path)) { return path; }
            free(path);
        }
    }
    die("no tokenizer for %s: looked for %s and tokenizer.bin beside it and in the current directory; pass -z",
        checkpoint, names[0]);
    return NULL;
}

int main(int argc, char *argv[]) {
    const char *checkpoint = NULL, *tokenizer_path = NULL, *prompt = NULL, *system_prompt = NULL;
    const char *mode = "generate", *out_path = NULL, *end_text = NULL;
    const char *words = NULL, *features = NULL, *summary = NULL;  // an instruct prompt's fields
    float temperature = 1.0f, topp = 0.9f;
    int steps = 256, topk = 0;
    unsigned long long seed = 0;
    if (argc < 2 || argv[1][0] == '-') {
        usage();
        return (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) ? 0 : 1;
    }
    checkpoint = argv[1];
    for (int i = 2; i < argc; i += 2) {
        const char *flag = argv[i];
        if (flag[0] != '-' || strlen(flag) != 2) { die("expected an option like -t, got '%s' (run with no arguments for help)", flag); }
        if (i + 1 >= argc) { die("option %s needs a value", flag); }
        const char *v = argv[i + 1];
        switch (flag[1]) {
        case 't': temperature = parse_float("-t", v, 0.0f, FLT_MAX, "a temperature in [0, 3.4e38]"); break;
        case 'p': topp = parse_float("-p", v, 0.0f, 1.0f, "a top-p value in [0, 1]"); break;
        case 'k': topk = (int)parse_int("-k", v, 0, INT_MAX, "a top-k count >= 0"); break;
        case 's': seed = (unsigned long long)parse_int("-s", v, 0, LLONG_MAX, "a seed >= 0"); break;
        case 'n': steps = (int)parse_int("-n", v, 0, INT_MAX, "a number of steps >= 0"); break;
        case 'i': prompt = v; break;
        case 'z': tokenizer_path = v; break;
        case 'e': end_text = v; break;
        case 'y': system_prompt = v; break;
        case 'o': out_path = v; break;
        case 'w': words = *v ? v : NULL; break;
        case 'f': features = *v ? v : NULL; break;
        case 'a': summary = *v ? v : NULL; break;
        case 'm':
            if (strcmp(v, "generate") && strcmp(v, "chat") && strcmp(v, "logits") && strcmp(v, "tokenize") && strcmp(v, "score")) {
                die("-m expects generate, chat, logits, tokenize or score, got '%s'", v);
            }
            mode = v;
            break;
        default: die("unknown option %s (run with no arguments for help)", flag);
        }
    }
    if (!strcmp(mode, "logits") && !out_path) { die("-m logits needs -o <file> for the logits"); }
    char *instruct = NULL;  // the instruct prompt, in place of -i
    if (words || features || summary) {
        if (prompt) { die("-i and -w/-f/-a: give a prompt or the fields of an instruct prompt, not both"); }
        if (!strcmp(mode, "logits")) { die("-m logits reads token ids from -i, not an instruct prompt (-w/-f/-a)"); }
        if (!strcmp(mode, "score")) { die("-m score reads a text file named by -i, not an instruct prompt (-w/-f/-a)"); }
        prompt = instruct = instruct_prompt(words, features, summary);
    }
    if (!strcmp(mode, "score") && !prompt) { die("-m score needs -i <text file> to score"); }
    if (seed == 0) { seed = (unsigned int)time(NULL); }
    CpuSample start;
    const CpuSample *since = sample_cpu(&start) ? &start : NULL;

    Transformer t;
    int tools = !strcmp(mode, "logits") || !strcmp(mode, "tokenize");  // one pass over the weights, or none
    build_transformer(&t, checkpoint, tools ? 1 : steps);
    const Config *c = &t.c;
    if (steps == 0 || steps > c->seq_len) { steps = c->seq_len; }

    if (!strcmp(mode, "logits")) {
        int n;
        int *ids = parse_ids(prompt ? prompt : "", c->vocab_size, &n);
        check_prompt_fits(n, c);
        RunState s;
        build_run_state(&s, c, n, since);
        write_logits(&t, &s, ids, n, out_path);
        free(ids);
        free_run_state(&s);
        free_transformer(&t);
        return 0;
    }

    char *found = tokenizer_path ? NULL : find_tokenizer(checkpoint, c->vocab_size);
    const char *tok_path = tokenizer_path ? tokenizer_path : found;
    Tokenizer tk;
    build_tokenizer(&tk, tok_path, c->vocab_size);
    check_identity(c, &tk, checkpoint, tok_path);
    if (end_text) {
        int n = (int)strlen(end_text);
        tk.end = -1;
        for (int i = 0; i < tk.vocab_size && n > 0 && tk.end < 0; i++) {
            if (tk.len[i] == n && memcmp(tk.vocab[i], end_text, n) == 0) { tk.end = i; }
        }
        if (n > 0 && tk.end < 0) { die("-e: '%s' is not a token of %s", end_text, tok_path); }
    }
    if (!strcmp(mode, "chat") && tk.eos < 0) { die("-m chat: %s has no EOS token to end a reply with", tok_path); }
    if (!strcmp(mode, "tokenize")) {
        int n;
        int *ids = encode(&tk, prompt ? prompt : "", 0, &n);
        for (int i = 0; i < n; i++) { printf(i ? " %d" : "%d", ids[i]); }
        printf("\n");
        flush_stdout();
        free(ids);
        free_tokenizer(&tk);
        free_transformer(&t);
        free(found);
        free(instruct);
        return 0;
    }

    if (!strcmp(mode, "score")) {
        RunState s;
        check_cache_size(&t, c->seq_len);
        build_run_state(&s, c, c->seq_len, since);
        score_file(&t, &s, &tk, prompt);
        free_run_state(&s);
        free_tokenizer(&tk);
        free_transformer(&t);
        free(found);
        return 0;
    }
    RunState s;
    check_cache_size(&t, steps);
    build_run_state(&s, c, steps, since);
    Sampler sp;
    build_sampler(&sp, c->vocab_size, temperature, topp, topk, seed);
    if (!strcmp(mode, "chat")) {
        chat(&t, &s, &tk, &sp, prompt, system_prompt, steps);
    } else {
        generate(&t, &s, &tk, &sp, prompt, steps, tok_path);
    }
    free_sampler(&sp);
    free_run_state(&s);
    free_tokenizer(&tk);
    free_transformer(&t);
    free(found);
    free(instruct);
    return 0;
}
