/* run.c: generate text with a minillm model exported by `python -m minillm export`.
 *
 * A language model is two files: the parameters (MODEL.bin) and this program. C99 (and the
 * __int128 of gcc and clang, for the calculator), no dependency but libm:   cc -O2 -o run run.c -lm
 *
 *   ./run MODEL.bin [options]            continue a prompt
 *   ./run MODEL.bin -c [options]         chat: each line of stdin is one user message
 * options:
 *   -p TEXT   the prompt (default: a newline). Character-level models only: each character
 *             is one token. A BPE model's prompt needs its regex pre-split, so give its ids.
 *   -i IDS    the prompt as token ids, e.g. -i 18,47,56 (any tokenizer)
 *   -n N      tokens to generate (default 200)
 *   -t T      temperature (default 0.8; 0 = greedy, the most likely token every step)
 *   -k K      top-k: sample among the K most likely tokens only (default 0: all)
 *   -P P      top-p: sample among the most likely tokens whose probability reaches P (default 1)
 *   -s SEED   seed of the sampler (default 1)
 *   -I        print the generated token ids instead of text (tests compare them)
 * The file format is documented byte by byte in minillm/export.py. Timing goes to stderr.
 *
 * Tools (lesson 10): a character model with the tokens <|calc|> and <|/calc|> may write a call,
 * <|calc|>37+48<|/calc|>, and the runner answers it as minillm.chat does: the result's tokens
 * ("85\n", or "error: ...\n" for a malformed call) go in as if sampled (they count towards -n).
 *
 * The context: with bs = block_size and slide = max(1, bs / 4), the first step runs the last
 * (at most bs) prompt tokens from window start s; each later step feeds the newest token
 * through the KV cache while the window [s, n) fits in bs tokens, and otherwise moves s to
 * n - (bs - slide) and rebuilds the cache from the window, positions starting at 0 again.
 * That is what GPT.generate and minillm/numpy_runner.py do, so greedy outputs are equal. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BIAS = 1, ROTARY = 2, RMSNORM = 4, SWIGLU = 8, TIED = 16 };
enum { FP32 = 0, FP16 = 1, INT8 = 2 };

typedef struct { float *w; int8_t *q; float *scale; int rows, cols; } Mat; /* w, or q & scale */
typedef struct { float *n1w, *n1b, *qkvb, *projb, *n2w, *n2b, *fcb, *mprojb;
                 Mat qkv, proj, fc, mproj; } Layer;
typedef struct {
    int V, T, L, H, C, F, flags, dtype, tokenizer, n_tokens, n_special;
    int *special; unsigned char **tok; int *tok_len;
    int open, close;                      /* <|calc|>, <|/calc|> (-1: no tools) */
    Mat emb, pos, head; Layer *layer; float *nfw, *nfb;
    float *kc, *vc;                       /* KV cache: (L, T, C) each */
    float *x, *xn, *qkv, *att, *y, *h, *logits;
} Model;

static const char *path;
static unsigned char *buf; static size_t size, at;

static void die(const char *msg) { fprintf(stderr, "error: %s\n", msg); exit(1); }
static void *alloc(size_t n) { void *p = calloc(n ? n : 1, 1); if (!p) die("out of memory."); return p; }

static const unsigned char *take(size_t n) {
    if (n > size - at) {
        fprintf(stderr, "error: %s is truncated: it ends at byte %zu, before the %s it promises.\n",
                path, size, at < 52 ? "header" : "tokenizer table and weights");
        exit(1);
    }
    at += n;
    return buf + at - n;
}
static uint32_t u32(void) { const unsigned char *b = take(4); return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24; }
static float f32(void) { uint32_t u = u32(); float f; memcpy(&f, &u, 4); return f; }

static float half(uint16_t h) {           /* IEEE fp16 -> fp32, subnormals and inf/NaN included */
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 31) u = sign | 0x7f800000u | m << 13;
    else if (e) u = sign | (e + 112) << 23 | m << 13;
    else if (!m) u = sign;
    else { e = 113; while (!(m & 1024)) { m <<= 1; e--; } u = sign | e << 23 | (m & 1023) << 13; }
    float f; memcpy(&f, &u, 4); return f;
}

static size_t mat_bytes(int rows, int cols, int dtype) {
    size_t n = (size_t)rows * cols;
    return dtype == FP32 ? 4 * n : dtype == FP16 ? 2 * n : 4 * (size_t)rows + n;
}
static float *vec(int n) { float *v = alloc(4 * (size_t)n); for (int i = 0; i < n; i++) v[i] = f32(); return v; }
static float *opt_vec(int n, int present) { return present ? vec(n) : NULL; }
static Mat mat(int rows, int cols, int dtype) {
    Mat m = {NULL, NULL, NULL, rows, cols};
    size_t n = (size_t)rows * cols;
    if (dtype == INT8) {
        m.scale = vec(rows);
        m.q = alloc(n); memcpy(m.q, take(n), n);
    } else {
        m.w = alloc(4 * n);
        for (size_t i = 0; i < n; i++) {
            if (dtype == FP32) m.w[i] = f32();
            else { const unsigned char *b = take(2); m.w[i] = half((uint16_t)(b[0] | b[1] << 8)); }
        }
    }
    return m;
}
static void row(const Mat *m, int r, float *out) {      /* one row as floats (embeddings) */
    for (int j = 0; j < m->cols; j++) {
        size_t i = (size_t)r * m->cols + j;
        out[j] = m->w ? m->w[i] : m->scale[r] * m->q[i];
    }
}

static void load(Model *M, const char *file) {
    FILE *f = fopen(path = file, "rb");
    if (!f) { fprintf(stderr, "error: cannot open %s.\n", file); exit(1); }
    fseek(f, 0, SEEK_END); size = (size_t)ftell(f); fseek(f, 0, SEEK_SET);
    buf = alloc(size);
    if (fread(buf, 1, size, f) != size) die("could not read the model file.");
    fclose(f);
    if (size < 4 || memcmp(buf, "MLLM", 4)) {
        fprintf(stderr, "error: %s is not a minillm export (it does not start with \"MLLM\").\n", file);
        exit(1);
    }
    at = 4;
    uint32_t version = u32();
    if (version != 1) {
        fprintf(stderr, "error: %s has format version %u, but this runner reads version 1; "
                "use the run.c of the minillm that wrote it.\n", file, version);
        exit(1);
    }
    int *field[] = {&M->V, &M->T, &M->L, &M->H, &M->C, &M->F, &M->flags, &M->dtype,
                    &M->tokenizer, &M->n_tokens, &M->n_special};
    for (int i = 0; i < 11; i++) { uint32_t v = u32(); *field[i] = v > 1u << 24 ? -1 : (int)v; }
    if (M->V < 1 || M->T < 1 || M->L < 1 || M->L > 4096 || M->H < 1 || M->C < 1 || M->C % M->H ||
        M->F < 1 || M->flags < 0 || M->dtype < 0 || M->dtype > INT8 || M->tokenizer < 0 ||
        M->tokenizer > 2 || M->n_tokens < 0 || M->n_tokens > M->V || M->n_special < 0 ||
        M->n_special > M->n_tokens || (M->tokenizer == 0) != (M->n_tokens == 0)) {
        fprintf(stderr, "error: %s has a damaged header (impossible sizes).\n", file);
        exit(1);
    }
    M->special = alloc(4 * (size_t)M->n_special + 4);
    for (int i = 0; i < M->n_special; i++) M->special[i] = (int)u32();
    M->tok = alloc(sizeof(char *) * (M->n_tokens + 1)); M->tok_len = alloc(4 * (size_t)M->n_tokens + 4);
    for (int i = 0; i < M->n_tokens; i++) {
        uint32_t n = u32();
        const unsigned char *bytes = take(n);
        M->tok_len[i] = (int)n; M->tok[i] = alloc((size_t)n + 1); memcpy(M->tok[i], bytes, n);
    }
    take(u32());                                   /* the BPE split pattern: Python's business */
    int C = M->C, V = M->V, F = M->F, d = M->dtype, bias = M->flags & BIAS;
    int lnb = bias && !(M->flags & RMSNORM), fc_rows = M->flags & SWIGLU ? 2 * F : F;
    size_t need = mat_bytes(V, C, d) + (M->flags & ROTARY ? 0 : mat_bytes(M->T, C, d))
        + (size_t)M->L * (4 * (2 * C + 2 * lnb * C) + mat_bytes(3 * C, C, d) + mat_bytes(C, C, d)
                          + mat_bytes(fc_rows, C, d) + mat_bytes(C, F, d)
                          + 4 * (size_t)bias * (3 * C + C + fc_rows + C))
        + 4 * (C + lnb * C) + (M->flags & TIED ? 0 : mat_bytes(V, C, d));
    if (size - at != need) {
        fprintf(stderr, "error: %s is %s: its header promises %zu bytes, and it has %zu.\n", file,
                size - at < need ? "truncated" : "longer than its header says", at + need, size);
        exit(1);
    }
    M->emb = mat(V, C, d);
    if (!(M->flags & ROTARY)) M->pos = mat(M->T, C, d);
    M->layer = alloc(sizeof(Layer) * M->L);
    for (int l = 0; l < M->L; l++) {
        Layer *y = &M->layer[l];
        y->n1w = vec(C); y->n1b = opt_vec(C, lnb);
        y->qkv = mat(3 * C, C, d); y->qkvb = opt_vec(3 * C, bias);
        y->proj = mat(C, C, d); y->projb = opt_vec(C, bias);
        y->n2w = vec(C); y->n2b = opt_vec(C, lnb);
        y->fc = mat(fc_rows, C, d); y->fcb = opt_vec(fc_rows, bias);
        y->mproj = mat(C, F, d); y->mprojb = opt_vec(C, bias);
    }
    M->nfw = vec(C); M->nfb = opt_vec(C, lnb);
    M->head = M->flags & TIED ? M->emb : mat(V, C, d);
    free(buf);
    size_t cache = (size_t)M->L * M->T * C;
    M->kc = alloc(4 * cache); M->vc = alloc(4 * cache);
    M->x = alloc(4 * (size_t)C); M->xn = alloc(4 * (size_t)C); M->qkv = alloc(12 * (size_t)C);
    M->att = alloc(4 * (size_t)M->T); M->y = alloc(4 * (size_t)C); M->h = alloc(8 * (size_t)F);
    M->logits = alloc(4 * (size_t)V);
}

/* y = W x (+ b): the one operation that reads every weight, so it is unrolled 4 ways */
static void matmul(float *y, const float *x, const Mat *m, const float *b) {
    int n = m->cols;
    for (int r = 0; r < m->rows; r++) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int j = 0;
        if (m->w) {
            const float *w = m->w + (size_t)r * n;
            for (; j + 3 < n; j += 4) { s0 += w[j] * x[j]; s1 += w[j+1] * x[j+1]; s2 += w[j+2] * x[j+2]; s3 += w[j+3] * x[j+3]; }
            for (; j < n; j++) s0 += w[j] * x[j];
            y[r] = (s0 + s1) + (s2 + s3);
        } else {                                  /* int8: integers times x, one scale per row */
            const int8_t *q = m->q + (size_t)r * n;
            for (; j + 3 < n; j += 4) { s0 += q[j] * x[j]; s1 += q[j+1] * x[j+1]; s2 += q[j+2] * x[j+2]; s3 += q[j+3] * x[j+3]; }
            for (; j < n; j++) s0 += q[j] * x[j];
            y[r] = m->scale[r] * ((s0 + s1) + (s2 + s3));
        }
        if (b) y[r] += b[r];
    }
}

static void norm(float *out, const float *x, const float *w, const float *b, int n, int rms) {
    float mean = 0, var = 0;
    if (!rms) { for (int i = 0; i < n; i++) mean += x[i]; mean /= n; }
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / n + 1e-5f);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + (b ? b[i] : 0.0f);
}

static void rope(float *v, int H, int D, int pos) {  /* rotate pairs (i, i + D/2) of each head */
    for (int h = 0; h < H; h++)
        for (int i = 0; i < D / 2; i++) {
            float freq = powf(10000.0f, -(float)(2 * i) / D), a = (float)pos * freq;
            float c = cosf(a), s = sinf(a), *p = v + h * D, x1 = p[i], x2 = p[i + D / 2];
            p[i] = x1 * c - x2 * s; p[i + D / 2] = x1 * s + x2 * c;
        }
}

/* One token at window position pos through the model; its keys and values go to cache slot pos.
 * Leaves the logits of the next token in M->logits. */
static void step(Model *M, int token, int pos) {
    int C = M->C, H = M->H, D = C / H, F = M->F, rms = M->flags & RMSNORM;
    row(&M->emb, token, M->x);
    if (!(M->flags & ROTARY)) { row(&M->pos, pos, M->xn); for (int i = 0; i < C; i++) M->x[i] += M->xn[i]; }
    for (int l = 0; l < M->L; l++) {
        Layer *y = &M->layer[l];
        float *kc = M->kc + (size_t)l * M->T * C, *vc = M->vc + (size_t)l * M->T * C;
        norm(M->xn, M->x, y->n1w, y->n1b, C, rms);
        matmul(M->qkv, M->xn, &y->qkv, y->qkvb);          /* q, k, v side by side */
        if (M->flags & ROTARY) { rope(M->qkv, H, D, pos); rope(M->qkv + C, H, D, pos); }
        memcpy(kc + (size_t)pos * C, M->qkv + C, 4 * (size_t)C);
        memcpy(vc + (size_t)pos * C, M->qkv + 2 * C, 4 * (size_t)C);
        for (int h = 0; h < H; h++) {                      /* attend to positions 0..pos */
            float *q = M->qkv + h * D, top = -INFINITY, sum = 0;
            for (int t = 0; t <= pos; t++) {
                float s = 0, *k = kc + (size_t)t * C + h * D;
                for (int i = 0; i < D; i++) s += q[i] * k[i];
                M->att[t] = s / sqrtf((float)D);
                if (M->att[t] > top) top = M->att[t];
            }
            for (int t = 0; t <= pos; t++) sum += M->att[t] = expf(M->att[t] - top);
            float *out = M->y + h * D;
            for (int i = 0; i < D; i++) out[i] = 0;
            for (int t = 0; t <= pos; t++) {
                float a = M->att[t] / sum, *v = vc + (size_t)t * C + h * D;
                for (int i = 0; i < D; i++) out[i] += a * v[i];
            }
        }
        matmul(M->xn, M->y, &y->proj, y->projb);
        for (int i = 0; i < C; i++) M->x[i] += M->xn[i];
        norm(M->xn, M->x, y->n2w, y->n2b, C, rms);
        matmul(M->h, M->xn, &y->fc, y->fcb);
        for (int i = 0; i < F; i++) {
            float g = M->h[i];
            M->h[i] = M->flags & SWIGLU ? g / (1.0f + expf(-g)) * M->h[F + i]   /* SiLU(gate) * value */
                                        : 0.5f * g * (1.0f + erff(g * 0.70710678f)); /* exact GELU */
        }
        matmul(M->xn, M->h, &y->mproj, y->mprojb);
        for (int i = 0; i < C; i++) M->x[i] += M->xn[i];
    }
    norm(M->xn, M->x, M->nfw, M->nfb, C, rms);
    matmul(M->logits, M->xn, &M->head, NULL);
}

/* ---- sampling ------------------------------------------------------------------------- */
static uint64_t rng_state = 1;
static float uniform(void) {                    /* xorshift64*: a float in [0, 1) */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
}
typedef struct { float p; int i; } Cand;
static int by_p(const void *a, const void *b) {
    float x = ((const Cand *)a)->p, y = ((const Cand *)b)->p;
    return x < y ? 1 : x > y ? -1 : ((const Cand *)a)->i - ((const Cand *)b)->i;
}
static int sample(Model *M, float temperature, int top_k, float top_p, Cand *c) {
    int V = M->V, best = 0;
    for (int i = 1; i < V; i++) if (M->logits[i] > M->logits[best]) best = i;  /* first max */
    if (temperature <= 0) return best;
    float top = M->logits[best], sum = 0;
    for (int i = 0; i < V; i++) { c[i].p = expf((M->logits[i] - top) / temperature); c[i].i = i; }
    qsort(c, (size_t)V, sizeof(Cand), by_p);
    int n = top_k > 0 && top_k < V ? top_k : V;
    for (int i = 0; i < n; i++) sum += c[i].p;
    float kept = 0, cum = 0;
    int m = 0;
    for (; m < n && kept < top_p * sum; m++) kept += c[m].p;   /* the nucleus: reach top_p */
    float r = uniform() * kept;
    for (int i = 0; i < m; i++) { cum += c[i].p; if (r < cum) return c[i].i; }
    return c[m - 1].i;
}

/* ---- the calculator ------------------------------------------------------------------- */
/* minillm.tools.calculate in C: its grammar, limits and messages, so a call gets the same result
 * from either runtime (tests/test_tools.py compares them call by call). expr := term (("+" | "-")
 * term)*; term := factor ("*" factor)*; factor := "-" factor | "(" expr ")" | digits.
 * Python's integers are unbounded and int64 stops at 19 digits, so values are __int128 (gcc,
 * clang), and one past 38 digits sets `big` instead of overflowing. That changes no result: 39
 * digits take 39 of a call's 40 characters, leaving no room to come back under 31 digits, so
 * Python says "more than 30 digits" too (or the same syntax error: parsing goes on here). */
enum { MAX_CALL_CHARS = 40, MAX_RESULT_DIGITS = 30 };
__extension__ typedef __int128 Int;
typedef struct { const char *s; int n, at, big; Int max; const char *err; } Calc;

static int peek(Calc *c) { return c->at < c->n ? (unsigned char)c->s[c->at] : -1; }
static Int checked(Calc *c, Int a, Int b, int times) {   /* a + b or a * b, within +-max */
    Int m = c->max;
    if (times ? a && b && (a < 0 ? -a : a) > m / (b < 0 ? -b : b)
              : (b > 0 && a > m - b) || (b < 0 && a < -m - b)) return c->big = 1, 0;
    return times ? a * b : a + b;
}
static Int number(Calc *c) {                   /* digits, ASCII only (Python's isdigit is wider) */
    int start = c->at;
    Int v = 0;
    while (peek(c) >= '0' && peek(c) <= '9') v = checked(c, checked(c, v, 10, 1), c->s[c->at++] - '0', 0);
    if (c->at == start) c->err = peek(c) >= 0 ? "a number was expected" : "a number was expected at the end";
    return v;
}
static Int expr(Calc *c);
static Int factor(Calc *c) {
    if (c->err) return 0;
    if (peek(c) == '-') { c->at++; return -factor(c); }
    if (peek(c) != '(') return number(c);
    c->at++;
    Int v = expr(c);
    if (!c->err && peek(c) != ')') c->err = "a parenthesis is not closed";
    c->at++;
    return v;
}
static Int term(Calc *c) {
    Int v = factor(c);
    while (!c->err && peek(c) == '*') { c->at++; v = checked(c, v, factor(c), 1); }
    return v;
}
static Int expr(Calc *c) {
    Int v = term(c);
    while (!c->err && (peek(c) == '+' || peek(c) == '-')) {
        int minus = c->s[c->at++] == '-'; Int w = term(c); v = checked(c, v, minus ? -w : w, 0); }
    return v;
}
/* What the runtime writes after a call of len bytes: the value or "error: why", then "\n". */
static void calc(const char *call, size_t len, char *out) {
    char text[4 * MAX_CALL_CHARS + 4], why[64] = "", digits[48];
    int n = 0, chars = 0, k = 0;
    for (size_t i = 0; i < len; i++) {         /* spaces dropped; characters counted, not bytes */
        if (call[i] == ' ') continue;
        chars += (call[i] & 0xC0) != 0x80;
        if (n < (int)sizeof text - 1) text[n++] = call[i];
    }
    Calc c = {text, n, 0, 0, 1, NULL};
    Int v = 0, limit = 1;                        /* limit: 10^30; c.max: the largest 38 digits */
    for (int i = 0; i < 38; i++) { c.max *= 10; limit *= i < MAX_RESULT_DIGITS ? 10 : 1; } c.max--;
    if (!chars) c.err = "the call is empty";
    else if (chars > MAX_CALL_CHARS) sprintf(why, "the call is longer than %d characters", MAX_CALL_CHARS);
    else if (v = expr(&c), !c.err && c.at < n) sprintf(why, "the call has more after character %d", c.at);
    else if (!c.err && (c.big || v >= limit || v <= -limit)) sprintf(why, "the result has more than %d digits", MAX_RESULT_DIGITS);
    if (c.err || why[0]) { sprintf(out, "error: %s\n", c.err ? c.err : why); return; }
    Int m = v < 0 ? -v : v;
    do digits[k++] = (char)('0' + (int)(m % 10)); while (m /= 10);
    if (v < 0) *out++ = '-';
    while (k) *out++ = digits[--k];
    strcpy(out, "\n");
}

/* ---- text ----------------------------------------------------------------------------- */
static int is_special(Model *M, int id) {
    for (int i = 0; i < M->n_special; i++) if (M->special[i] == id) return 1;
    return 0;
}
static int special_id(Model *M, const char *text) {
    for (int i = 0; i < M->n_special; i++) {
        int id = M->special[i];
        if (id < M->n_tokens && M->tok_len[id] == (int)strlen(text) && !memcmp(M->tok[id], text, strlen(text))) return id;
    }
    return -1;
}
/* Character-level encoding: each UTF-8 character is the token with the same bytes (never a
 * special token, so a message can never forge one). Returns the count, or -1 with a sentence. */
static int encode(Model *M, const char *text, int *ids) {
    if (M->tokenizer != 1) {
        fprintf(stderr, "error: %s\n", M->tokenizer == 2 ? "this model's BPE tokenizer needs "
                "its regex pre-split, which lives in Python: give the prompt's ids with -i "
                "(tokenizer.encode(text))." : "this model file has no tokenizer: give ids with -i.");
        return -1;
    }
    int n = 0;
    for (const unsigned char *s = (const unsigned char *)text; *s; n++) {
        int len = *s < 0x80 ? 1 : *s >> 5 == 6 ? 2 : *s >> 4 == 14 ? 3 : 4, found = -1;
        for (int i = 0; i < M->n_tokens && found < 0; i++)
            if (M->tok_len[i] == len && !is_special(M, i) && !memcmp(M->tok[i], s, (size_t)len)) found = i;
        if (found < 0) {
            fprintf(stderr, "error: the character '%.*s' is not in this model's vocabulary.\n", len, (const char *)s);
            return -1;
        }
        ids[n] = found; s += len;
    }
    return n;
}
static void put(Model *M, int id, int as_ids) {
    if (as_ids) printf("%d ", id);
    else if (id < M->n_tokens) fwrite(M->tok[id], 1, (size_t)M->tok_len[id], stdout);
    fflush(stdout);
}

/* Write after ids[0..n) the result of the call the answer ids[P..n) has just closed: the text
 * after its last <|calc|> (none: the empty call), as minillm.tools.pending_call reads it.
 * Returns the result's length in tokens, or -1 if the model lacks one of its characters. */
static int answer(Model *M, int *ids, int P, int n) {
    int from = n - 1; size_t len = 0; char result[96];
    for (int i = n - 2; i >= P; i--) if (ids[i] == M->open) { from = i + 1; break; }
    for (int i = from; i < n - 1; i++) len += ids[i] < M->n_tokens ? (size_t)M->tok_len[ids[i]] : 0;
    char *call = alloc(len), *at = call;
    for (int i = from; i < n - 1; i++) if (ids[i] < M->n_tokens) at = (char *)memcpy(at, M->tok[ids[i]], (size_t)M->tok_len[ids[i]]) + M->tok_len[ids[i]];
    calc(call, len, result);
    free(call);
    return encode(M, result, ids + n);
}

/* Generate after ids[0..P) (up to max_new tokens, written to ids[P..]) with the window policy
 * at the top of the file; stop early at a special token if stop_special, but not at <|calc|>: a
 * call is answered, and the cache then takes every token it has not seen. Returns the count. */
static int generate(Model *M, int *ids, int P, int max_new, float temp, int top_k, float top_p,
                    int stop_special, int as_ids, Cand *c) {
    int bs = M->T, slide = bs / 4 > 1 ? bs / 4 : 1, s = P > bs ? P - bs : 0, n = P, fed = s, made = 0;
    while (made < max_new) {
        if (n - s > bs) fed = s = n - (bs - slide);   /* slide: rebuild the cache from the window */
        for (; fed < n; fed++) step(M, ids[fed], fed - s);
        int next = sample(M, temp, top_k, top_p, c);
        ids[n++] = next; made++;
        if (stop_special && is_special(M, next) && next != M->open && next != M->close) break;
        put(M, next, as_ids);
        if (next == M->close) {          /* a call: its result goes in, and the model goes on */
            int r = answer(M, ids, P, n);
            if (r < 0) break;                   /* a character the model lacks (said on stderr) */
            for (int i = 0; i < r && made < max_new; i++, made++) put(M, ids[n++], as_ids);
        }
    }
    return made;
}

int main(int argc, char **argv) {
    const char *prompt = "\n", *id_list = NULL;
    int max_new = 200, top_k = 0, chat = 0, as_ids = 0;
    float temp = 0.8f, top_p = 1.0f;
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s MODEL.bin [-p TEXT | -i IDS] [-n N] [-t TEMP] [-k K] [-P P] "
                "[-s SEED] [-c] [-I]   (see the top of run.c)\n", argv[0]);
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        char o = argv[i][0] == '-' && argv[i][1] && !argv[i][2] ? argv[i][1] : '?';
        if (o == 'c') { chat = 1; continue; }
        if (o == 'I') { as_ids = 1; continue; }
        if (o == '?' || !strchr("pinktPs", o) || i + 1 >= argc) {
            fprintf(stderr, "error: unknown option or missing value: %s\n", argv[i]);
            return 1;
        }
        const char *v = argv[++i];
        if (o == 'p') prompt = v; else if (o == 'i') id_list = v;
        else if (o == 'n') max_new = atoi(v); else if (o == 'k') top_k = atoi(v);
        else if (o == 't') temp = (float)atof(v); else if (o == 'P') top_p = (float)atof(v);
        else rng_state = (uint64_t)strtoull(v, NULL, 10) * 2654435761u + 1;
    }
    Model M; memset(&M, 0, sizeof M);
    load(&M, argv[1]);
    M.open = special_id(&M, "<|calc|>"); M.close = special_id(&M, "<|/calc|>");
    if (M.open < 0 || M.close < 0 || M.tokenizer != 1) M.open = M.close = -1; /* results are typed by characters */
    if (max_new < 0 || top_p <= 0 || top_p > 1) die("-n must be >= 0 and -P in (0, 1].");
    Cand *c = alloc(sizeof(Cand) * (size_t)M.V);
    size_t cap = strlen(prompt) + (id_list ? strlen(id_list) : 0) + 8192 + (size_t)max_new;
    int *ids = alloc(4 * cap), P = 0;
    if (chat) {
        int user = special_id(&M, "<|user|>"), end = special_id(&M, "<|end|>"), assistant = special_id(&M, "<|assistant|>");
        if (user < 0 || end < 0 || assistant < 0) die("this model has no chat tokens (<|user|>, <|end|>, <|assistant|>): chat with an SFT or RLHF model.");
        char line[4096];
        while (fprintf(stderr, "you> "), fgets(line, sizeof line, stdin)) {
            line[strcspn(line, "\r\n")] = 0;
            if (!line[0]) continue;
            ids[0] = user;                 /* <|user|> text <|end|><|assistant|>, as chat.py */
            if ((P = encode(&M, line, ids + 1)) < 0) continue;
            ids[P + 1] = end; ids[P + 2] = assistant; P += 3;
            printf("model> ");
            int made = generate(&M, ids, P, max_new, temp, top_k, top_p, 1, as_ids, c);
            printf("%s\n", made && ids[P + made - 1] == end ? "" : " [no end of turn]");
        }
        return 0;
    }
    if (id_list) {
        for (const char *s = id_list; *s; ) {
            char *e; long v = strtol(s, &e, 10);
            if (e == s || v < 0 || v >= M.V) die("-i takes token ids in [0, vocab_size) separated by commas.");
            ids[P++] = (int)v; s = *e ? e + 1 : e;
        }
    } else if ((P = encode(&M, prompt, ids)) < 0) return 1;
    if (P == 0) die("the prompt is empty: give at least one token (e.g. a newline).");
    if (!as_ids) for (int i = 0; i < P; i++) put(&M, ids[i], 0);
    clock_t t0 = clock();
    int made = generate(&M, ids, P, max_new, temp, top_k, top_p, 0, as_ids, c);
    double sec = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("\n");
    fprintf(stderr, "%d tokens in %.3f s: %.1f tokens/s\n", made, sec, sec > 0 ? made / sec : 0.0);
    return 0;
}
