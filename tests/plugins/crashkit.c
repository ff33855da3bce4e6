/* crashkit: a plugin that misbehaves on request, for the process-isolation tests.
 * Compile with -DKIT_NAME='"x"' (and -DKIT_FLAGS=BW_FLAG_THREAD_SAFE if wanted).
 *
 *   .../pid              {"pid": <the worker's pid>}
 *   .../segv             dereferences NULL
 *   .../abort            abort()
 *   .../exit?code=N      exit(N)
 *   .../hang             sleeps ~60 s, ignoring cancellation
 *   .../wait?ms=N        sleeps up to N ms, polling `cancelled` (returns BW_CANCELLED)
 *   .../spin?ms=N        burns N ms of CPU (default: forever), ignoring cancellation
 *   .../spin-polite      burns CPU until cancelled, then returns BW_CANCELLED
 *   .../hog?then=X       mallocs and touches 1 MiB blocks until malloc fails (at most
 *                        max_mb, default 2048), then X: segv (default), abort, or fail
 *                        (frees everything and returns BW_FAIL "out of memory")
 *   .../leak?mb=N        mallocs and touches N MiB (default 1) and never frees them
 *   .../log              logs "hello from <pid>" at info level
 *   anything else        200 {}
 *
 * Config: "init": "segv" | "abort" | "fail" | "hang" crashes, fails or hangs init; "segv_init_if" names a
 * file whose existence makes init crash; "slow_init_if" names a file whose existence
 * makes init sleep 3 s (a respawn that takes long); "marker" names a file that shutdown appends
 * "shutdown <pid>" to.
 */
#define _POSIX_C_SOURCE 200809L
#include <backworks/sdk.h>
#include <time.h>
#include <unistd.h>

#ifndef KIT_NAME
#define KIT_NAME "crashkit"
#endif
#ifndef KIT_FLAGS
#define KIT_FLAGS 0
#endif

typedef struct { char marker[512]; const bw_host *host; } ck_state;

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int ends_with(bw_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static long query_long(const bw_request *req, const char *name, long fallback) {
    char buf[32];
    return bw_query_get(req, name, buf, sizeof buf) > 0 ? atol(buf) : fallback;
}

static void config_string(const char *config, const char *key, char *out, size_t cap) {
    char pattern[64];
    const char *at, *end;
    size_t n;
    out[0] = 0;
    snprintf(pattern, sizeof pattern, "\"%s\": \"", key);
    at = strstr(config, pattern);
    if (!at) return;
    at += strlen(pattern);
    end = strchr(at, '"');
    n = end ? (size_t)(end - at) : 0;
    if (n >= cap) n = cap - 1;
    memcpy(out, at, n);
    out[n] = 0;
}

static void *volatile leaked;

static void crash(void) {
    volatile int *volatile nowhere = NULL;
    *nowhere = 1;
}

static int32_t ck_init(const bw_host *host, const char *config, size_t len, void **state,
                       bw_response *error) {
    char how[32], file[512];
    ck_state *st;
    (void)len;
    config_string(config, "init", how, sizeof how);
    if (strcmp(how, "segv") == 0) crash();
    if (strcmp(how, "abort") == 0) abort();
    if (strcmp(how, "fail") == 0) return bw_fail(error, "crashkit init refuses: told to fail");
    if (strcmp(how, "hang") == 0) sleep_ms(60000);
    config_string(config, "segv_init_if", file, sizeof file);
    if (file[0] && access(file, F_OK) == 0) crash();
    config_string(config, "slow_init_if", file, sizeof file);
    if (file[0] && access(file, F_OK) == 0) sleep_ms(3000);
    st = (ck_state *)calloc(1, sizeof *st);
    if (!st) return bw_fail(error, "out of memory");
    config_string(config, "marker", st->marker, sizeof st->marker);
    st->host = host;
    *state = st;
    return BW_OK;
}

static int32_t hog(const bw_request *req, bw_response *resp) {
    char then[16];
    void **blocks = NULL;
    long n = 0, max_mb = query_long(req, "max_mb", 2048);
    if (bw_query_get(req, "then", then, sizeof then) <= 0) strcpy(then, "segv");
    blocks = (void **)calloc((size_t)max_mb, sizeof *blocks);
    if (!blocks) return bw_fail(resp, "out of memory");
    for (n = 0; n < max_mb; n++) {
        char *block = (char *)malloc(1 << 20);
        if (!block) break;
        memset(block, 0x5a, 1 << 20); /* touch it: resident, not just reserved */
        blocks[n] = block;
    }
    if (n < max_mb) {
        if (strcmp(then, "abort") == 0) abort();
        if (strcmp(then, "fail") == 0) {
            while (n--) free(blocks[n]);
            free(blocks);
            return bw_fail(resp, "out of memory");
        }
        crash(); /* what unchecked code does with the NULL */
    }
    while (n--) free(blocks[n]);
    free(blocks);
    return bw_respond_json(resp, 200, "{\"hogged\": true}");
}

static int32_t ck_handle(void *state, const bw_request *req, bw_response *resp) {
    ck_state *st = (ck_state *)state;
    bw_str path = req->path;
    char json[96];
    if (ends_with(path, "/pid")) {
        snprintf(json, sizeof json, "{\"pid\": %ld}", (long)getpid());
        return bw_respond_json(resp, 200, json);
    }
    if (ends_with(path, "/segv")) crash();
    if (ends_with(path, "/abort")) abort();
    if (ends_with(path, "/exit")) exit((int)query_long(req, "code", 3));
    if (ends_with(path, "/hang")) {
        sleep_ms(60000);
        return bw_respond_json(resp, 200, "{\"hung\": true}");
    }
    if (ends_with(path, "/wait")) {
        long waited;
        for (waited = 0; waited < query_long(req, "ms", 100); waited += 5) {
            if (bw_is_cancelled(req)) return BW_CANCELLED;
            sleep_ms(5);
        }
        return bw_respond_json(resp, 200, "{\"waited\": true}");
    }
    if (ends_with(path, "/spin")) {
        double start = cpu_seconds(), limit = query_long(req, "ms", -1) / 1000.0;
        volatile unsigned long x = 0;
        while (limit < 0 || cpu_seconds() - start < limit) x++;
        return bw_respond_json(resp, 200, "{\"spun\": true}");
    }
    if (ends_with(path, "/spin-polite")) {
        volatile unsigned long x = 0;
        while (!bw_is_cancelled(req)) x++;
        return BW_CANCELLED;
    }
    if (ends_with(path, "/hog")) return hog(req, resp);
    if (ends_with(path, "/leak")) {
        long mb = query_long(req, "mb", 1);
        char *block = (char *)malloc((size_t)mb << 20);
        if (!block) return bw_fail(resp, "out of memory");
        memset(block, 0x5a, (size_t)mb << 20); /* resident, and never freed */
        leaked = block;                         /* so the compiler keeps it */
        snprintf(json, sizeof json, "{\"pid\": %ld}", (long)getpid());
        return bw_respond_json(resp, 200, json);
    }
    if (ends_with(path, "/log")) {
        bw_log_info(st->host, "hello from %ld", (long)getpid());
        return bw_respond_json(resp, 200, "{\"logged\": true}");
    }
    return bw_respond_json(resp, 200, "{}");
}

static int32_t ck_health(void *state, bw_response *report) {
    char json[64];
    (void)state;
    snprintf(json, sizeof json, "{\"pid\": %ld}", (long)getpid());
    return bw_respond_json(report, 200, json);
}

static void ck_shutdown(void *state) {
    ck_state *st = (ck_state *)state;
    if (st->marker[0]) {
        FILE *f = fopen(st->marker, "a");
        if (f) {
            fprintf(f, "shutdown %ld\n", (long)getpid());
            fclose(f);
        }
    }
    free(st);
}

BW_DEFINE_PLUGIN(.name = KIT_NAME, .version = "0.1.0", .description = "misbehaves on request",
                 .flags = KIT_FLAGS, .init = ck_init, .handle = ck_handle,
                 .health = ck_health, .shutdown = ck_shutdown)
