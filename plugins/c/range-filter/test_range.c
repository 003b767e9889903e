/* Native tests of the plugin's logic (range.c, config.c): `./build test` runs them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "range.h"

static int failures;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static char err[256];

static bool init(struct range_filter *f, const char *json) {
    err[0] = '\0';
    return range_filter_init(f, json, strlen(json), err, sizeof err);
}

static void keeps_readings_inside_the_range_and_drops_the_rest(void) {
    struct range_filter f;
    CHECK(init(&f, "{\"field\": \"humidity\", \"min\": 0.0, \"max\": 100}"));
    CHECK(strcmp(f.field, "humidity") == 0);
    CHECK(range_filter_keeps(&f, 55.0));
    CHECK(range_filter_keeps(&f, 0.0));
    CHECK(range_filter_keeps(&f, 100.0));
    CHECK(!range_filter_keeps(&f, -3.0));
    CHECK(!range_filter_keeps(&f, 140.5));
    CHECK(!range_filter_keeps(&f, NAN));
    range_filter_free(&f);
}

static void reads_escapes_and_exponents(void) {
    struct range_filter f;
    CHECK(init(&f, " {\"field\":\"t\\u00e9mp\\\"\",\"min\":-1.5e2,\"max\":2E1} "));
    CHECK(strcmp(f.field, "t\xc3\xa9mp\"") == 0);
    CHECK(f.min == -150.0 && f.max == 20.0);
    range_filter_free(&f);
}

static void expect_error(const char *json, const char *message) {
    struct range_filter f;
    CHECK(!init(&f, json));
    if (strcmp(err, message) != 0) {
        fprintf(stderr, "config %s: error \"%s\", expected \"%s\"\n", json, err, message);
        failures++;
    }
}

static void rejects_bad_configs_with_a_clear_message(void) {
    expect_error("{\"field\": \"h\", \"min\": 5.0, \"max\": 1.0}", "min (5) is above max (1)");
    expect_error("{\"field\": \"h\", \"min\": 5.0}", "missing key `max`");
    expect_error("{\"field\": \"h\", \"min\": 0, \"max\": 1, \"mx\": 2}",
                 "unknown key `mx` (this plugin takes field, min and max)");
    expect_error("{\"field\": \"h\", \"min\": \"0\", \"max\": 1}", "`min` must be a number");
    expect_error("{\"field\": 3, \"min\": 0, \"max\": 1}",
                 "`field` must be a field name, such as \"humidity\"");
    expect_error("{\"field\": [\"h\"], \"min\": 0, \"max\": 1}",
                 "`field` is a table or a list: this plugin takes none");
    expect_error("{\"field\": \"h\" \"min\": 0}", "config is not a flat JSON object: a missing comma");
    expect_error("{\"field\": \"h", "config is not a flat JSON object: a string without its closing quote");
    expect_error("{} x", "config is not a flat JSON object: text after the closing }");
}

int main(void) {
    keeps_readings_inside_the_range_and_drops_the_rest();
    reads_escapes_and_exponents();
    rejects_bad_configs_with_a_clear_message();
    if (failures) {
        fprintf(stderr, "range-filter: %d check(s) failed\n", failures);
        return 1;
    }
    printf("range-filter: all checks passed\n");
    return 0;
}
