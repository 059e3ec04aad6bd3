#include "jtext.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void sg_jtext_init(sg_jtext *j, const char *s, size_t n, char *out)
{
    j->start = j->p = s;
    j->end = s + n;
    j->o = out;
    j->depth = 0;
    j->utf8 = 0;
    j->err[0] = 0;
}

static int fail(sg_jtext *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(sg_jtext *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof(j->err), fmt, ap);
    va_end(ap);
    return -1;
}

/* What the cursor is at, for messages. */
static int unexpected(sg_jtext *j, const char *wanted)
{
    size_t at = (size_t)(j->p - j->start);
    if (j->p >= j->end) return fail(j, "unexpected end of input at byte %zu, expected %s", at, wanted);
    unsigned char c = (unsigned char)*j->p;
    if (c >= 0x20 && c < 0x7f) return fail(j, "unexpected '%c' at byte %zu, expected %s", c, at, wanted);
    return fail(j, "unexpected byte 0x%02x at byte %zu, expected %s", c, at, wanted);
}

void sg_jtext_ws(sg_jtext *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

/* Length of the UTF-8 sequence at s (at most n bytes), 0 when invalid:
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xc2) return 0;
    if (c < 0xe0) return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && s[1] < 0xa0) return 0; /* overlong */
        if (c == 0xed && s[1] >= 0xa0) return 0; /* surrogate */
        return 3;
    }
    if (c < 0xf5) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0 && s[1] < 0x90) return 0; /* overlong */
        if (c == 0xf4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

int sg_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = utf8_len(u + i, n - i);
        if (!l) return 0;
        i += l;
    }
    return 1;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xc0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (char)(0xf0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

static const char hexdig[] = "0123456789abcdef";

/* One character as it appears in a canonical string. */
static char *put_escaped(char *o, unsigned cp)
{
    switch (cp) {
    case '"': *o++ = '\\'; *o++ = '"'; return o;
    case '\\': *o++ = '\\'; *o++ = '\\'; return o;
    case '\b': *o++ = '\\'; *o++ = 'b'; return o;
    case '\f': *o++ = '\\'; *o++ = 'f'; return o;
    case '\n': *o++ = '\\'; *o++ = 'n'; return o;
    case '\r': *o++ = '\\'; *o++ = 'r'; return o;
    case '\t': *o++ = '\\'; *o++ = 't'; return o;
    }
    if (cp < 0x20) {
        memcpy(o, "\\u00", 4);
        o[4] = hexdig[cp >> 4];
        o[5] = hexdig[cp & 15];
        return o + 6;
    }
    return put_utf8(o, cp);
}

int sg_jtext_string(sg_jtext *j, int decode)
{
    const char *p = j->p + 1; /* past the opening quote */
    const char *end = j->end;
    char *o = j->o;
    if (!decode) *o++ = '"';
    for (;;) {
        /* the common run: printable ASCII, copied as it is */
        const char *run = p;
        while (p < end && (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x80 && *p != '"' &&
               *p != '\\')
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p >= end) {
            j->p = p;
            return fail(j, "unterminated string at byte %zu", (size_t)(p - j->start));
        }
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            p++;
            break;
        }
        if (c < 0x20) {
            j->p = p;
            return fail(j, "control character 0x%02x in a string at byte %zu", c,
                        (size_t)(p - j->start));
        }
        if (c >= 0x80) {
            size_t l = utf8_len((const unsigned char *)p, (size_t)(end - p));
            if (!l) {
                j->p = p;
                j->utf8 = 1;
                return fail(j, "invalid UTF-8 at byte %zu", (size_t)(p - j->start));
            }
            memcpy(o, p, l);
            o += l;
            p += l;
            continue;
        }
        /* an escape */
        if (end - p < 2) {
            j->p = end;
            return fail(j, "unterminated string at byte %zu", (size_t)(end - j->start));
        }
        char e = p[1];
        unsigned cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (end - p < 6 || hex4(p + 2, &cp) < 0) {
                j->p = p;
                return fail(j, "invalid \\u escape at byte %zu", (size_t)(p - j->start));
            }
            if (cp >= 0xd800 && cp < 0xdc00) {
                unsigned lo;
                if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || hex4(p + 8, &lo) < 0 ||
                    lo < 0xdc00 || lo > 0xdfff) {
                    j->p = p;
                    return fail(j, "a high surrogate without its low half at byte %zu",
                                (size_t)(p - j->start));
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                j->p = p;
                return fail(j, "a lone low surrogate at byte %zu", (size_t)(p - j->start));
            } else if (cp == 0) {
                j->p = p;
                return fail(j, "\\u0000 is not allowed, at byte %zu", (size_t)(p - j->start));
            }
            p += 4;
            break;
        default:
            j->p = p;
            return fail(j, "invalid escape at byte %zu", (size_t)(p - j->start));
        }
        p += 2;
        o = decode ? put_utf8(o, cp) : put_escaped(o, cp);
    }
    if (!decode) *o++ = '"';
    j->p = p;
    j->o = o;
    return 0;
}

#define MAX_NUMBER 128

static int number(sg_jtext *j)
{
    const char *s = j->p, *p = s, *end = j->end;
    int real = 0;
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return unexpected(j, "a value");
    }
    if (p < end && *p == '.') {
        real = 1;
        p++;
        if (p >= end || *p < '0' || *p > '9') {
            j->p = p;
            return unexpected(j, "a digit");
        }
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        real = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') {
            j->p = p;
            return unexpected(j, "a digit");
        }
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    size_t n = (size_t)(p - s);
    if (n >= MAX_NUMBER) return fail(j, "a number of %zu characters at byte %zu", n, (size_t)(s - j->start));
    char tmp[MAX_NUMBER];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    errno = 0;
    if (real) {
        double d = strtod(tmp, NULL);
        if (errno == ERANGE && !isfinite(d))
            return fail(j, "real number overflow at byte %zu", (size_t)(s - j->start));
    } else {
        (void)strtoll(tmp, NULL, 10);
        if (errno == ERANGE)
            return fail(j, "an integer out of the 64-bit range at byte %zu", (size_t)(s - j->start));
    }
    memcpy(j->o, s, n);
    j->o += n;
    j->p = p;
    return 0;
}

static int literal(sg_jtext *j, const char *word, size_t n)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return unexpected(j, "a value");
    memcpy(j->o, word, n);
    j->o += n;
    j->p += n;
    return 0;
}

/* Keys already seen in one object, as spans of the output. Up to SMALL
 * they are compared as they come; a larger object is sorted at its end. */
#define SMALL 16
typedef struct keyspan {
    const char *s;
    size_t n;
} keyspan;

static int cmp_key(const void *a, const void *b)
{
    const keyspan *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int object(sg_jtext *j)
{
    keyspan small[SMALL], *keys = small;
    size_t nkeys = 0, cap = SMALL;
    int rc = -1;
    const char *at = j->p;
    *j->o++ = '{';
    j->p++;
    sg_jtext_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        *j->o++ = '}';
        return 0;
    }
    for (;;) {
        if (j->p >= j->end || *j->p != '"') {
            unexpected(j, "a string key");
            goto out;
        }
        const char *kpos = j->p;
        char *k = j->o;
        if (sg_jtext_string(j, 0) < 0) goto out;
        keyspan ks = {k, (size_t)(j->o - k)};
        if (nkeys < SMALL) {
            for (size_t i = 0; i < nkeys; i++)
                if (keys[i].n == ks.n && memcmp(keys[i].s, ks.s, ks.n) == 0) {
                    fail(j, "duplicate key %.*s at byte %zu", (int)(ks.n > 64 ? 64 : ks.n), ks.s,
                         (size_t)(kpos - j->start));
                    goto out;
                }
        }
        if (nkeys == cap) {
            keyspan *bigger = malloc(2 * cap * sizeof(*bigger));
            if (!bigger) {
                fail(j, "out of memory");
                goto out;
            }
            memcpy(bigger, keys, nkeys * sizeof(*keys));
            if (keys != small) free(keys);
            keys = bigger;
            cap *= 2;
        }
        keys[nkeys++] = ks;
        sg_jtext_ws(j);
        if (j->p >= j->end || *j->p != ':') {
            unexpected(j, "':'");
            goto out;
        }
        j->p++;
        *j->o++ = ':';
        sg_jtext_ws(j);
        if (sg_jtext_value(j) < 0) goto out;
        sg_jtext_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            *j->o++ = ',';
            sg_jtext_ws(j);
            continue;
        }
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            *j->o++ = '}';
            break;
        }
        unexpected(j, "',' or '}'");
        goto out;
    }
    if (nkeys > SMALL) {
        qsort(keys, nkeys, sizeof(*keys), cmp_key);
        for (size_t i = 1; i < nkeys; i++)
            if (cmp_key(&keys[i - 1], &keys[i]) == 0) {
                fail(j, "duplicate key %.*s in the object at byte %zu",
                     (int)(keys[i].n > 64 ? 64 : keys[i].n), keys[i].s, (size_t)(at - j->start));
                goto out;
            }
    }
    rc = 0;
out:
    if (keys != small) free(keys);
    return rc;
}

static int array(sg_jtext *j)
{
    *j->o++ = '[';
    j->p++;
    sg_jtext_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        *j->o++ = ']';
        return 0;
    }
    for (;;) {
        if (sg_jtext_value(j) < 0) return -1;
        sg_jtext_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            *j->o++ = ',';
            sg_jtext_ws(j);
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            *j->o++ = ']';
            return 0;
        }
        return unexpected(j, "',' or ']'");
    }
}

int sg_jtext_value(sg_jtext *j)
{
    if (j->p >= j->end) return unexpected(j, "a value");
    switch (*j->p) {
    case '"': return sg_jtext_string(j, 0);
    case '{':
    case '[': {
        if (j->depth >= SG_JTEXT_MAX_DEPTH)
            return fail(j, "nested deeper than %d levels at byte %zu", SG_JTEXT_MAX_DEPTH,
                        (size_t)(j->p - j->start));
        j->depth++;
        int rc = *j->p == '{' ? object(j) : array(j);
        j->depth--;
        return rc;
    }
    case 't': return literal(j, "true", 4);
    case 'f': return literal(j, "false", 5);
    case 'n': return literal(j, "null", 4);
    default: return number(j);
    }
}


/* Whether none of 8 bytes needs a second look: no control character, no
 * quote, no backslash, nothing over 0x7f (bit tricks from "Bit Twiddling
 * Hacks": a byte under n, a zero byte). */
static int plain8(const char *s)
{
    uint64_t v;
    memcpy(&v, s, 8);
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
#define HAS_ZERO(x) (((x) - ones) & ~(x) & highs)
    uint64_t ctl = (v - ones * 0x20) & ~v & highs;
    return !(ctl | (v & highs) | HAS_ZERO(v ^ (ones * '"')) | HAS_ZERO(v ^ (ones * '\\')));
#undef HAS_ZERO
}

/* s as a JSON string into out; check: refuse bytes that are not UTF-8
 * (returns 0), else copy bytes over 0x7f as they are. */
static size_t escape(const char *s, size_t n, char *out, int check)
{
    char *p = out;
    *p++ = '"';
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8 && plain8(s + i)) {
            memcpy(p, s + i, 8);
            p += 8;
            i += 8;
            continue;
        }
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x80 && check) {
            size_t l = utf8_len((const unsigned char *)s + i, n - i);
            if (!l) return 0;
            memcpy(p, s + i, l);
            p += l;
            i += l;
            continue;
        }
        if (ch >= 0x20 && ch != '"' && ch != '\\') *p++ = (char)ch;
        else p = put_escaped(p, ch);
        i++;
    }
    *p++ = '"';
    return (size_t)(p - out);
}

size_t sg_json_escape(const char *s, size_t n, char *out)
{
    return escape(s, n, out, 0);
}

size_t sg_json_escape_utf8(const char *s, size_t n, char *out)
{
    return escape(s, n, out, 1);
}

size_t sg_fmt_int(long long v, char *out)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t o = 0;
    if (v < 0) out[o++] = '-';
    while (n)
        out[o++] = tmp[--n];
    return o;
}

/* ---- substring search ----
 *
 * string.find with a plain needle looks at 16 places per step: a place is
 * a candidate only when the needle's first and last bytes match there
 * (W. Mula's SIMD-friendly search); candidates are checked byte by byte. */

/* Whether h starts with the lowercase n, ignoring ASCII case. */
static int same_at_ci(const char *h, const char *n, size_t nl)
{
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)h[i];
        if ((unsigned char)(c - 'A') < 26u) c |= 0x20;
        if (c != (unsigned char)n[i]) return 0;
    }
    return 1;
}

static const char *find_short(const char *h, size_t hl, const char *n, size_t nl)
{
    if (nl == 0) return h;
    if (nl > hl) return NULL;
    size_t i = 0, last = hl - nl; /* the places are 0..last */
#ifdef __SSE2__
    const __m128i f = _mm_set1_epi8(n[0]), l = _mm_set1_epi8(n[nl - 1]);
    for (; i + 15 <= last; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(h + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(h + i + nl - 1));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, f), _mm_cmpeq_epi8(b, l)));
        while (m) {
            size_t k = i + (size_t)__builtin_ctz(m);
            if (memcmp(h + k + 1, n + 1, nl - 2) == 0) return h + k;
            m &= m - 1;
        }
    }
#endif
    for (; i <= last; i++)
        if (h[i] == n[0] && h[i + nl - 1] == n[nl - 1] && memcmp(h + i + 1, n + 1, nl - 2) == 0)
            return h + i;
    return NULL;
}

const char *sg_memfind(const char *h, size_t hl, const char *n, size_t nl)
{
    if (nl == 1) return memchr(h, n[0], hl);
    if (nl > 32) return memmem(h, hl, n, nl);
    return find_short(h, hl, n, nl);
}

/* ---- word sets: is any of a few dozen words in this text? ----
 *
 * Hyperscan's "Teddy": the words are spread over 8 buckets, and each of a
 * word's first three bytes (case folded) sets its bucket's bit in a table
 * per byte position. A place in the text is a candidate for a bucket only
 * when its three bytes all carry that bucket's bit, so most places are
 * ruled out for every word at once, 16 at a time with SSSE3 (the bytes'
 * two nibbles index two 16-entry tables through PSHUFB), one at a time
 * with 256-entry tables otherwise. Candidates are checked byte by byte. */

enum { WS_FP = 3, WS_BUCKETS = 8 };

struct sg_wordset {
    unsigned char lo[WS_FP][16], hi[WS_FP][16]; /* by nibble, for PSHUFB */
    unsigned char byte[WS_FP][256];             /* by byte, for the scalar loop */
    int count;
    char **words;  /* lowercase */
    size_t *lens;
    unsigned char bucket_of[SG_WORDSET_MAX];
};

static int simd_allowed = 1;

void sg_wordset_simd(int on)
{
    simd_allowed = on;
}

sg_wordset *sg_wordset_new(char *const *words, const size_t *lens, int count)
{
    if (count < 1 || count > SG_WORDSET_MAX) return NULL;
    sg_wordset *ws = calloc(1, sizeof(*ws));
    if (!ws) return NULL;
    ws->words = calloc((size_t)count, sizeof(*ws->words));
    ws->lens = calloc((size_t)count, sizeof(*ws->lens));
    if (!ws->words || !ws->lens) goto fail;
    for (int w = 0; w < count; w++) {
        if (lens[w] < 1) goto fail;
        if (!(ws->words[w] = malloc(lens[w] + 1))) goto fail;
        ws->count++;
        for (size_t k = 0; k < lens[w]; k++) {
            unsigned char c = (unsigned char)words[w][k];
            ws->words[w][k] = (char)((unsigned)(c - 'A') < 26u ? c | 0x20 : c);
        }
        ws->words[w][lens[w]] = 0;
        ws->lens[w] = lens[w];
        unsigned char bit = (unsigned char)(1u << (w % WS_BUCKETS));
        ws->bucket_of[w] = (unsigned char)(w % WS_BUCKETS);
        for (int f = 0; f < WS_FP; f++) {
            if ((size_t)f >= lens[w]) { /* a short word: any byte here */
                for (int c = 0; c < 256; c++) ws->byte[f][c] |= bit;
                for (int x = 0; x < 16; x++) ws->lo[f][x] |= bit, ws->hi[f][x] |= bit;
                continue;
            }
            /* the text is folded by setting bit 0x20 of every byte, so a
             * word's byte is looked up folded the same way */
            unsigned char c = (unsigned char)(ws->words[w][f] | 0x20);
            ws->byte[f][c] |= bit;
            ws->lo[f][c & 15] |= bit;
            ws->hi[f][c >> 4] |= bit;
        }
    }
    return ws;
fail:
    sg_wordset_free(ws);
    return NULL;
}

void sg_wordset_free(sg_wordset *ws)
{
    if (!ws) return;
    for (int w = 0; w < ws->count; w++)
        free(ws->words[w]);
    free(ws->words);
    free(ws->lens);
    free(ws);
}

int sg_wordset_count(const sg_wordset *ws)
{
    return ws->count;
}

const char *sg_wordset_word(const sg_wordset *ws, int i, size_t *len)
{
    *len = ws->lens[i];
    return ws->words[i];
}

/* Whether a word of one of the buckets in mask starts at h + k. */
static int ws_check(const sg_wordset *ws, const char *h, size_t hl, size_t k, unsigned mask)
{
    for (int w = 0; w < ws->count; w++)
        if ((mask >> ws->bucket_of[w] & 1) && k + ws->lens[w] <= hl &&
            same_at_ci(h + k, ws->words[w], ws->lens[w]))
            return 1;
    return 0;
}

static int ws_find_scalar(const sg_wordset *ws, const char *h, size_t hl)
{
    const unsigned char *u = (const unsigned char *)h;
    for (size_t k = 0; k < hl; k++) {
        unsigned m = ws->byte[0][u[k] | 0x20];
        if (!m) continue;
        /* past the end, any byte: the check has the last word */
        if (k + 1 < hl) m &= ws->byte[1][u[k + 1] | 0x20];
        if (m && k + 2 < hl) m &= ws->byte[2][u[k + 2] | 0x20];
        if (m && ws_check(ws, h, hl, k, m)) return 1;
    }
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <tmmintrin.h>

/* The buckets that may start at each of the 16 places from p. */
__attribute__((target("ssse3"))) static inline __m128i ws_step(const sg_wordset *ws, const char *p)
{
    const __m128i nib = _mm_set1_epi8(0x0f), fold = _mm_set1_epi8(0x20);
    __m128i m = _mm_set1_epi8(-1);
    for (int f = 0; f < WS_FP; f++) {
        __m128i v = _mm_or_si128(_mm_loadu_si128((const __m128i *)(p + f)), fold);
        __m128i lo = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)ws->lo[f]), _mm_and_si128(v, nib));
        __m128i hi = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)ws->hi[f]),
                                      _mm_and_si128(_mm_srli_epi16(v, 4), nib));
        m = _mm_and_si128(m, _mm_and_si128(lo, hi));
    }
    return m;
}

/* Check the candidates of one step at h + at; 1 when a word is there. */
__attribute__((target("ssse3"))) static int ws_step_check(const sg_wordset *ws, __m128i m,
                                                          const char *h, size_t hl, size_t at)
{
    unsigned any = 0xffffu & ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(m, _mm_setzero_si128()));
    if (!any) return 0;
    unsigned char b[16];
    _mm_storeu_si128((__m128i *)b, m);
    while (any) {
        int k = __builtin_ctz(any);
        if (ws_check(ws, h, hl, at + (size_t)k, b[k])) return 1;
        any &= any - 1;
    }
    return 0;
}

__attribute__((target("ssse3"))) static int ws_find_ssse3(const sg_wordset *ws, const char *h, size_t hl)
{
    size_t i = 0;
    /* a step reads 16 + 2 bytes */
    for (; i + 16 + WS_FP - 1 <= hl; i += 16)
        if (ws_step_check(ws, ws_step(ws, h + i), h, hl, i)) return 1;
    if (i >= hl) return 0;
    /* the last places, from a padded copy: their words end inside it */
    char tail[16 + 16 + WS_FP];
    size_t n = hl - i;
    memset(tail, 0, sizeof(tail));
    memcpy(tail, h + i, n);
    for (size_t j = 0; j < n; j += 16)
        if (ws_step_check(ws, ws_step(ws, tail + j), tail, n, j)) return 1;
    return 0;
}
#endif

int sg_wordset_find(const sg_wordset *ws, const char *h, size_t hl)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static int ssse3 = -1;
    if (ssse3 < 0) ssse3 = __builtin_cpu_supports("ssse3");
    if (ssse3 && simd_allowed) return ws_find_ssse3(ws, h, hl);
#endif
    return ws_find_scalar(ws, h, hl);
}
