/* The plugin's logic, free of the WebAssembly bindings so that it builds and is tested natively
 * (test_range.c): drops physically impossible readings, events whose `field` lies outside
 * [min, max]. */
#ifndef RANGE_H
#define RANGE_H

#include <stdbool.h>
#include <stddef.h>

struct range_filter {
    char *field;
    double min;
    double max;
};

/* Reads the step's config, `{"field": "humidity", "min": 0.0, "max": 100.0}`. Returns false with
 * a message in `err` when a key is missing, unknown or of the wrong type, or min is above max. */
bool range_filter_init(struct range_filter *filter, const char *json, size_t len, char *err,
                       size_t err_len);

/* Whether a reading passes (NaN does not). */
bool range_filter_keeps(const struct range_filter *filter, double x);

void range_filter_free(struct range_filter *filter);

#endif
