/* A reader for a step's config: a flat JSON object of strings, numbers and booleans, which is
 * what weir passes to `init` (the step's table from the pipeline config, as JSON). Nested tables
 * and arrays are refused. */
#ifndef WEIR_CONFIG_H
#define WEIR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum config_kind { CONFIG_STRING, CONFIG_NUMBER, CONFIG_BOOL };

struct config_value {
    enum config_kind kind;
    char *text; /* CONFIG_STRING: NUL-terminated, owned by the reader (copy what you keep) */
    double number;
    bool flag;
};

/* Called for each key of the object, in order. Returns false after writing a message to `err`
 * (at most `err_len` bytes) to stop reading. */
typedef bool (*config_visit)(void *ctx, const char *key, const struct config_value *value,
                             char *err, size_t err_len);

/* Reads `json` (`len` bytes, not NUL-terminated). Returns false with a message in `err`. */
bool config_read(const char *json, size_t len, config_visit visit, void *ctx, char *err,
                 size_t err_len);

#endif
