/* See config.h. A strict reader: JSON text as RFC 8259 has it, for a flat object. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reader {
    const char *at;
    const char *end;
    char *err;
    size_t err_len;
};

static bool fail(struct reader *r, const char *what) {
    snprintf(r->err, r->err_len, "config is not a flat JSON object: %s", what);
    return false;
}

static void skip_space(struct reader *r) {
    while (r->at < r->end && (*r->at == ' ' || *r->at == '\t' || *r->at == '\n' || *r->at == '\r'))
        r->at++;
}

static bool eat(struct reader *r, char c) {
    skip_space(r);
    if (r->at < r->end && *r->at == c) {
        r->at++;
        return true;
    }
    return false;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string after its opening quote, unescaped into a new NUL-terminated buffer. */
static bool read_string(struct reader *r, char **out) {
    char *buf = malloc((size_t)(r->end - r->at) + 1);
    size_t n = 0;
    if (!buf) return fail(r, "out of memory");
    while (r->at < r->end && *r->at != '"') {
        unsigned char c = (unsigned char)*r->at++;
        if (c < 0x20) {
            free(buf);
            return fail(r, "a control character in a string");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            continue;
        }
        if (r->at >= r->end) break;
        char e = *r->at++;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4; i++) {
                int d = r->at < r->end ? hex_digit(*r->at++) : -1;
                if (d < 0) {
                    free(buf);
                    return fail(r, "a bad \\u escape");
                }
                cp = cp << 4 | (unsigned)d;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) {
                free(buf);
                return fail(r, "a \\u escape of a surrogate (write the character itself)");
            }
            if (cp < 0x80) {
                buf[n++] = (char)cp;
            } else if (cp < 0x800) {
                buf[n++] = (char)(0xC0 | cp >> 6);
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                buf[n++] = (char)(0xE0 | cp >> 12);
                buf[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            free(buf);
            return fail(r, "a bad escape in a string");
        }
    }
    if (r->at >= r->end) {
        free(buf);
        return fail(r, "a string without its closing quote");
    }
    r->at++;
    buf[n] = '\0';
    *out = buf;
    return true;
}

static bool read_number(struct reader *r, double *out) {
    const char *start = r->at;
    if (r->at < r->end && *r->at == '-') r->at++;
    if (r->at >= r->end || *r->at < '0' || *r->at > '9') return fail(r, "a bad number");
    while (r->at < r->end && strchr("0123456789.eE+-", *r->at)) r->at++;
    size_t len = (size_t)(r->at - start);
    char text[64];
    if (len >= sizeof text) return fail(r, "a number too long");
    memcpy(text, start, len);
    text[len] = '\0';
    char *end;
    *out = strtod(text, &end);
    if (end != text + len) return fail(r, "a bad number");
    return true;
}

static bool word(struct reader *r, const char *w) {
    size_t len = strlen(w);
    if ((size_t)(r->end - r->at) >= len && memcmp(r->at, w, len) == 0) {
        r->at += len;
        return true;
    }
    return false;
}

bool config_read(const char *json, size_t len, config_visit visit, void *ctx, char *err,
                 size_t err_len) {
    struct reader r = {json, json + len, err, err_len};
    if (!eat(&r, '{')) return fail(&r, "it does not start with {");
    bool first = true;
    while (!eat(&r, '}')) {
        if (!first && !eat(&r, ',')) return fail(&r, "a missing comma");
        first = false;
        if (!eat(&r, '"')) return fail(&r, "a key that is not a string");
        char *key;
        if (!read_string(&r, &key)) return false;
        struct config_value value = {0};
        bool ok = eat(&r, ':');
        if (!ok) {
            fail(&r, "a missing colon");
        } else if (eat(&r, '"')) {
            value.kind = CONFIG_STRING;
            ok = read_string(&r, &value.text);
        } else if (skip_space(&r), word(&r, "true")) {
            value.kind = CONFIG_BOOL;
            value.flag = true;
        } else if (word(&r, "false")) {
            value.kind = CONFIG_BOOL;
            value.flag = false;
        } else if (r.at < r.end && (*r.at == '{' || *r.at == '[')) {
            snprintf(err, err_len, "`%s` is a table or a list: this plugin takes none", key);
            ok = false;
        } else {
            value.kind = CONFIG_NUMBER;
            ok = read_number(&r, &value.number);
        }
        ok = ok && visit(ctx, key, &value, err, err_len);
        free(key);
        free(value.text);
        if (!ok) return false;
    }
    skip_space(&r);
    if (r.at != r.end) return fail(&r, "text after the closing }");
    return true;
}
