#define _POSIX_C_SOURCE 200809L /* strdup */
#include "range.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

struct seen {
    struct range_filter *filter;
    bool field, min, max;
};

static bool visit(void *ctx, const char *key, const struct config_value *value, char *err,
                  size_t err_len) {
    struct seen *seen = ctx;
    bool is_min = strcmp(key, "min") == 0;
    if (strcmp(key, "field") == 0) {
        if (value->kind != CONFIG_STRING || value->text[0] == '\0') {
            snprintf(err, err_len, "`field` must be a field name, such as \"humidity\"");
            return false;
        }
        free(seen->filter->field);
        seen->filter->field = strdup(value->text);
        seen->field = true;
    } else if (is_min || strcmp(key, "max") == 0) {
        if (value->kind != CONFIG_NUMBER) {
            snprintf(err, err_len, "`%s` must be a number", key);
            return false;
        }
        *(is_min ? &seen->filter->min : &seen->filter->max) = value->number;
        *(is_min ? &seen->min : &seen->max) = true;
    } else {
        snprintf(err, err_len, "unknown key `%s` (this plugin takes field, min and max)", key);
        return false;
    }
    return true;
}

bool range_filter_init(struct range_filter *filter, const char *json, size_t len, char *err,
                       size_t err_len) {
    *filter = (struct range_filter){0};
    struct seen seen = {.filter = filter};
    if (!config_read(json, len, visit, &seen, err, err_len)) goto fail;
    const char *missing = !seen.field ? "field" : !seen.min ? "min" : !seen.max ? "max" : NULL;
    if (missing) {
        snprintf(err, err_len, "missing key `%s`", missing);
        goto fail;
    }
    if (filter->min > filter->max) {
        snprintf(err, err_len, "min (%g) is above max (%g)", filter->min, filter->max);
        goto fail;
    }
    return true;
fail:
    range_filter_free(filter);
    return false;
}

bool range_filter_keeps(const struct range_filter *filter, double x) {
    return x >= filter->min && x <= filter->max;
}

void range_filter_free(struct range_filter *filter) {
    free(filter->field);
    filter->field = NULL;
}
