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
 * Filters probe every update for a dozen short words, so the search looks
 * at 16 places per step: a place is a candidate only when the needle's
 * first and last bytes (first two, for several words at once) match there
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

/* The words' first two bytes are tested at 16 places per step, the two
 * loads and the case folding shared by all of them; a one-byte word needs
 * only the first. Candidates are checked byte by byte. */
int sg_memfind_any_ci(const char *h, size_t hl, char *const *words, const size_t *lens, int count)
{
    size_t i = 0;
#ifdef __SSE2__
    enum { MAXW = 32 };
    if (count <= MAXW && hl >= 17) {
        __m128i f[MAXW], s[MAXW];
        const __m128i bit = _mm_set1_epi8(0x20);
        for (int w = 0; w < count; w++) {
            f[w] = _mm_set1_epi8((char)(words[w][0] | 0x20));
            s[w] = _mm_set1_epi8((char)((lens[w] > 1 ? words[w][1] : 0) | 0x20));
        }
        for (; i + 17 <= hl; i += 16) {
            __m128i a = _mm_or_si128(_mm_loadu_si128((const __m128i *)(h + i)), bit);
            __m128i b = _mm_or_si128(_mm_loadu_si128((const __m128i *)(h + i + 1)), bit);
            for (int w = 0; w < count; w++) {
                __m128i m = _mm_cmpeq_epi8(a, f[w]);
                if (lens[w] > 1) m = _mm_and_si128(m, _mm_cmpeq_epi8(b, s[w]));
                unsigned bits = (unsigned)_mm_movemask_epi8(m);
                while (bits) {
                    size_t k = i + (size_t)__builtin_ctz(bits);
                    if (k + lens[w] <= hl && same_at_ci(h + k, words[w], lens[w])) return 1;
                    bits &= bits - 1;
                }
            }
        }
    }
#endif
    for (; i < hl; i++)
        for (int w = 0; w < count; w++)
            if (i + lens[w] <= hl && same_at_ci(h + i, words[w], lens[w])) return 1;
    return 0;
}
