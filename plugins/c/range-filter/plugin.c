/* The glue between the logic (range.c) and weir's contract: the `transformer` world, through the
 * C bindings that `wasm-c bindgen` generates (transformer.h). weir owns the batches passed in;
 * the bindings free what this returns once weir has read it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "range.h"
#include "transformer.h"

typedef weir_operator_types_values_t values_t;

static struct range_filter filter;

static void set_error(exports_weir_operator_transform_error_t *err, uint8_t tag, const char *text) {
    err->tag = tag;
    transformer_string_dup(&err->val.config, text);
}

bool exports_weir_operator_transform_init(transformer_string_t *config,
                                          exports_weir_operator_transform_error_t *err) {
    char message[256];
    range_filter_free(&filter);
    bool ok = range_filter_init(&filter, (const char *)config->ptr, config->len, message,
                                sizeof message);
    transformer_string_free(config);
    if (!ok) set_error(err, WEIR_OPERATOR_TYPES_ERROR_CONFIG, message);
    return ok;
}

static bool named(const transformer_string_t *name, const char *base, const char *suffix) {
    size_t base_len = strlen(base), suffix_len = strlen(suffix);
    return name->len == base_len + suffix_len && memcmp(name->ptr, base, base_len) == 0 &&
           memcmp(name->ptr + base_len, suffix, suffix_len) == 0;
}

/* Allocates `n` elements of `size` bytes; NULL only when n is 0 (weir then reads no element). */
static void *alloc(size_t n, size_t size) {
    if (n == 0) return NULL;
    void *p = calloc(n, size);
    if (!p) abort();
    return p;
}

/* The entries of `in` at the rows where `keep` is true, `kept` of them, into `out`. */
static void copy_rows(const values_t *in, const bool *keep, size_t kept, values_t *out) {
    out->tag = in->tag;
    size_t j = 0;
    switch (in->tag) {
    case WEIR_OPERATOR_TYPES_VALUES_FLOAT:
        out->val.float_.ptr = alloc(kept, sizeof *in->val.float_.ptr);
        out->val.float_.len = kept;
        for (size_t i = 0; i < in->val.float_.len; i++)
            if (keep[i]) out->val.float_.ptr[j++] = in->val.float_.ptr[i];
        break;
    case WEIR_OPERATOR_TYPES_VALUES_INT:
        out->val.int_.ptr = alloc(kept, sizeof *in->val.int_.ptr);
        out->val.int_.len = kept;
        for (size_t i = 0; i < in->val.int_.len; i++)
            if (keep[i]) out->val.int_.ptr[j++] = in->val.int_.ptr[i];
        break;
    case WEIR_OPERATOR_TYPES_VALUES_TEXT:
        /* Strings move from the input to the output; the input's entry is emptied. */
        out->val.text.ptr = alloc(kept, sizeof *in->val.text.ptr);
        out->val.text.len = kept;
        for (size_t i = 0; i < in->val.text.len; i++)
            if (keep[i]) {
                out->val.text.ptr[j++] = in->val.text.ptr[i];
                in->val.text.ptr[i] = (transformer_option_string_t){0};
            }
        break;
    case WEIR_OPERATOR_TYPES_VALUES_FLAG:
        out->val.flag.ptr = alloc(kept, sizeof *in->val.flag.ptr);
        out->val.flag.len = kept;
        for (size_t i = 0; i < in->val.flag.len; i++)
            if (keep[i]) out->val.flag.ptr[j++] = in->val.flag.ptr[i];
        break;
    }
}

/* Whether row `i` of `values` holds a value, and that value as a number if it is one. */
static bool number_at(const values_t *values, size_t i, double *x) {
    switch (values->tag) {
    case WEIR_OPERATOR_TYPES_VALUES_FLOAT:
        *x = values->val.float_.ptr[i].val;
        return values->val.float_.ptr[i].is_some;
    case WEIR_OPERATOR_TYPES_VALUES_INT:
        *x = (double)values->val.int_.ptr[i].val;
        return values->val.int_.ptr[i].is_some;
    default:
        return false;
    }
}

static const char *other_at(const values_t *values, size_t i) {
    switch (values->tag) {
    case WEIR_OPERATOR_TYPES_VALUES_TEXT:
        return values->val.text.ptr[i].is_some ? "text" : NULL;
    case WEIR_OPERATOR_TYPES_VALUES_FLAG:
        return values->val.flag.ptr[i].is_some ? "flag" : NULL;
    default:
        return NULL;
    }
}

bool exports_weir_operator_transform_transform(exports_weir_operator_transform_batch_t *events,
                                               exports_weir_operator_transform_output_t *ret,
                                               exports_weir_operator_transform_error_t *err) {
    (void)err;
    size_t n = events->ts_ms.len;
    weir_operator_types_list_column_t *columns = &events->columns;
    /* The field's columns: one plain, others `field#kind` (the typing rule in the WIT docs). */
    bool *is_field = alloc(columns->len, sizeof(bool));
    for (size_t c = 0; c < columns->len; c++) {
        const transformer_string_t *name = &columns->ptr[c].name;
        is_field[c] = named(name, filter.field, "") || named(name, filter.field, "#float") ||
                      named(name, filter.field, "#int") || named(name, filter.field, "#text") ||
                      named(name, filter.field, "#flag");
    }

    bool *keep = alloc(n, sizeof(bool));
    size_t kept = 0;
    weir_operator_types_list_rejected_t rejected = {alloc(n, sizeof *rejected.ptr), 0};
    for (size_t i = 0; i < n; i++) {
        keep[i] = true;
        for (size_t c = 0; c < columns->len; c++) {
            if (!is_field[c]) continue;
            double x;
            const char *kind;
            if (number_at(&columns->ptr[c].values, i, &x)) {
                keep[i] = range_filter_keeps(&filter, x);
            } else if ((kind = other_at(&columns->ptr[c].values, i))) {
                char reason[256];
                snprintf(reason, sizeof reason, "field \"%s\" is %s, not a number", filter.field,
                         kind);
                rejected.ptr[rejected.len].index = (uint32_t)i;
                transformer_string_dup(&rejected.ptr[rejected.len].reason, reason);
                rejected.len++;
                keep[i] = false;
            }
        }
        kept += keep[i];
    }

    weir_operator_types_batch_t *out = &ret->events;
    out->key = (transformer_list_u32_t){alloc(kept, sizeof(uint32_t)), kept};
    out->ts_ms = (transformer_list_s64_t){alloc(kept, sizeof(int64_t)), kept};
    for (size_t i = 0, j = 0; i < n; i++)
        if (keep[i]) {
            out->key.ptr[j] = events->key.ptr[i];
            out->ts_ms.ptr[j++] = events->ts_ms.ptr[i];
        }
    out->columns = (weir_operator_types_list_column_t){alloc(columns->len, sizeof *columns->ptr),
                                                       columns->len};
    for (size_t c = 0; c < columns->len; c++) {
        out->columns.ptr[c].name = columns->ptr[c].name;
        columns->ptr[c].name = (transformer_string_t){0};
        copy_rows(&columns->ptr[c].values, keep, kept, &out->columns.ptr[c].values);
    }
    if (rejected.len == 0) {
        free(rejected.ptr);
        rejected.ptr = NULL;
    }
    ret->rejected = rejected;
    free(keep);
    free(is_field);
    exports_weir_operator_transform_batch_free(events);
    return true;
}
