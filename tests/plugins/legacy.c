/* legacy: a plugin of the original Backworks design (the legacy ABI, version 0), as
 * its authors wrote them: no Backworks header, global state, static answer buffers.
 * What it answers depends on how the endpoint it is given (the route pattern) ends:
 *
 *   .../config     {"config": <the config JSON plugin_initialize was given>}
 *   .../echo       {"endpoint": ..., "method": ..., "data_len": N}
 *   .../raw        the data back, byte for byte (not JSON)
 *   .../static     a string literal (the host must never free an answer)
 *   .../slow       sleeps 20 ms, counting calls that overlap it
 *   .../overlaps   {"overlaps": N}
 *   .../big        1000 bytes of "x"
 *   anything else  NULL: not handled
 *
 * plugin_initialize fails with 5 when the config mentions "fail"; plugin_shutdown
 * returns 9 when it mentions "shutdown_fails", and appends "shutdown\n" to the file
 * named by the config's "marker" key (a host may load a private copy of the file, whose
 * globals a test cannot reach). The globals are read with ctypes.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifndef LEGACY_NAME
#define LEGACY_NAME "legacy-echo"
#endif

struct plugin_info {
    const char *name;
    const char *version;
    const char *description;
};

int legacy_initialized, legacy_shutdowns, legacy_calls, legacy_overlaps;

static volatile int in_call;
static char config[1024] = "";
static char answer[2048];

static const struct plugin_info info = {LEGACY_NAME, "0.3.0",
                                        "A plugin written for the original design"};

const struct plugin_info *plugin_info(void) { return &info; }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int32_t plugin_initialize(const char *config_json) {
    snprintf(config, sizeof config, "%s", config_json);
    legacy_initialized++;
    return strstr(config, "\"fail\"") ? 5 : 0;
}

const char *plugin_process_endpoint(const char *endpoint, const char *method,
                                    const char *data) {
    legacy_calls++;
    if (ends_with(endpoint, "/config")) {
        snprintf(answer, sizeof answer, "{\"config\": %s}", config);
    } else if (ends_with(endpoint, "/echo")) {
        snprintf(answer, sizeof answer,
                 "{\"endpoint\": \"%s\", \"method\": \"%s\", \"data_len\": %zu}", endpoint,
                 method, strlen(data));
    } else if (ends_with(endpoint, "/raw")) {
        snprintf(answer, sizeof answer, "%s", data);
    } else if (ends_with(endpoint, "/static")) {
        return "{\"static\": true}";
    } else if (ends_with(endpoint, "/slow")) {
        struct timespec ts = {0, 20 * 1000000L};
        if (in_call) legacy_overlaps++;
        in_call = 1;
        nanosleep(&ts, NULL);
        in_call = 0;
        snprintf(answer, sizeof answer, "{\"slept_ms\": 20}");
    } else if (ends_with(endpoint, "/overlaps")) {
        snprintf(answer, sizeof answer, "{\"overlaps\": %d}", legacy_overlaps);
    } else if (ends_with(endpoint, "/big")) {
        memset(answer, 'x', 1000);
        answer[1000] = '\0';
    } else {
        return NULL;
    }
    return answer;
}

int32_t plugin_shutdown(void) {
    const char *key = strstr(config, "\"marker\": \"");
    legacy_shutdowns++;
    if (key) {
        char path[512];
        const char *start = key + strlen("\"marker\": \"");
        const char *end = strchr(start, '"');
        size_t n = end && (size_t)(end - start) < sizeof path ? (size_t)(end - start) : 0;
        FILE *f;
        memcpy(path, start, n);
        path[n] = '\0';
        if (n && (f = fopen(path, "a")) != NULL) {
            fputs("shutdown\n", f);
            fclose(f);
        }
    }
    return strstr(config, "\"shutdown_fails\"") ? 9 : 0;
}
