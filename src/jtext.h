/* JSON text without a tree. Publishes are parsed, validated and turned
 * into their delivered form here, not through jansson: building and
 * freeing a jansson tree for every update cost more than everything else
 * the gateway does with it.
 *
 * The scanner is strict the way jansson with JSON_REJECT_DUPLICATES is:
 * RFC 8259 grammar, UTF-8 only, no \u0000, no duplicate keys, integers in
 * int64 range, finite reals. It writes the canonical compact form of what
 * it reads (no whitespace; strings escaped as jansson escapes them;
 * numbers as written), which is never longer than the input. */
#ifndef SG_JTEXT_H
#define SG_JTEXT_H

#include <stddef.h>

#define SG_JTEXT_MAX_DEPTH 64

typedef struct sg_jtext {
    const char *start, *p, *end; /* the input and the cursor */
    char *o;                     /* output cursor: room for the input's length */
    int depth;
    int utf8;                    /* the error is about UTF-8 */
    char err[120];
} sg_jtext;

void sg_jtext_init(sg_jtext *j, const char *s, size_t n, char *out);
void sg_jtext_ws(sg_jtext *j);

/* One value at the cursor, in canonical form to j->o. 0, or -1 with
 * j->err set (and j->utf8 when the input is not UTF-8). */
int sg_jtext_value(sg_jtext *j);

/* The string at the cursor (which is at '"'). decode: its bytes to j->o,
 * without quotes; otherwise its canonical form, quotes included. */
int sg_jtext_string(sg_jtext *j, int decode);

/* Whether s is valid UTF-8. */
int sg_utf8_valid(const char *s, size_t n);

/* s as a JSON string, quotes included, escaped as jansson does; out has
 * room for 6 * n + 2 bytes. Returns the bytes written. */
size_t sg_json_escape(const char *s, size_t n, char *out);

/* Where needle n (nl bytes) first occurs in h (hl bytes), or NULL. Needles
 * of up to 32 bytes are looked for at 16 places at once (a place is a
 * candidate only when the first and last bytes match); longer ones go to
 * memmem, which is linear on any input. */
const char *sg_memfind(const char *h, size_t hl, const char *n, size_t nl);

/* A set of 1 to SG_WORDSET_MAX words (any bytes but NUL), for asking
 * whether any of them occurs in a text, ignoring ASCII case: one pass over
 * the text for all of them. NULL when out of memory or count is out of
 * range. The words are kept lowercase. */
#define SG_WORDSET_MAX 32
typedef struct sg_wordset sg_wordset;
sg_wordset *sg_wordset_new(char *const *words, const size_t *lens, int count);
void sg_wordset_free(sg_wordset *ws);
int sg_wordset_find(const sg_wordset *ws, const char *h, size_t hl);
int sg_wordset_count(const sg_wordset *ws);
const char *sg_wordset_word(const sg_wordset *ws, int i, size_t *len);
/* Specs: 0 to use the portable loop even where SSSE3 is there. */
void sg_wordset_simd(int on);

/* The same for bytes not yet known to be UTF-8: 0 when they are not. */
size_t sg_json_escape_utf8(const char *s, size_t n, char *out);

/* The decimal digits of v into out (room for 21 bytes); returns their count. */
size_t sg_fmt_int(long long v, char *out);

#endif
