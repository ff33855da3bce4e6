/* work: the plugin of `make bench`'s open-loop rows, a known amount of work per call.
 *
 *   GET /spin?us=N    burns N µs of the calling thread's CPU time, then answers
 *                     {"spun_us": N}
 *   GET /block?ms=N   sleeps N ms (nanosleep: the thread waits, the CPU is free), then
 *                     answers {"blocked_ms": N}
 *
 * bench/cplugins.py compiles it twice: as `spin` (thread-safe and non-blocking, so
 * `dispatch: auto` calls it on the event loop) and as `block` (thread-safe only: a
 * plugin that sleeps must say it blocks).
 *
 * The spin reads CLOCK_THREAD_CPUTIME_ID, so time the thread spends preempted on a
 * busy machine is not counted as work: every call costs the same CPU.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <backworks/sdk.h>
#include <errno.h>
#include <time.h>

#ifndef WORK_NAME
#define WORK_NAME "work"
#endif
#ifndef WORK_FLAGS
#define WORK_FLAGS BW_FLAG_THREAD_SAFE
#endif

static long query_long(const bw_request *req, const char *name, long fallback) {
    char buf[32];
    char *end;
    long value;
    if (bw_query_get(req, name, buf, sizeof buf) < 0) return fallback;
    value = strtol(buf, &end, 10);
    return (*end == '\0' && value >= 0 && value <= 10L * 1000 * 1000) ? value : fallback;
}

static long long thread_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int32_t spin(const bw_request *req, bw_response *resp) {
    char json[64];
    long us = query_long(req, "us", 5);
    long long until = thread_ns() + (long long)us * 1000;
    while (thread_ns() < until) {
    }
    snprintf(json, sizeof json, "{\"spun_us\": %ld}", us);
    return bw_respond_json(resp, 200, json);
}

static int32_t block(const bw_request *req, bw_response *resp) {
    char json[64];
    long ms = query_long(req, "ms", 10);
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    snprintf(json, sizeof json, "{\"blocked_ms\": %ld}", ms);
    return bw_respond_json(resp, 200, json);
}

static int32_t work_handle(void *state, const bw_request *req, bw_response *resp) {
    (void)state;
    if (bw_str_eq(req->path, "/spin")) return spin(req, resp);
    if (bw_str_eq(req->path, "/block")) return block(req, resp);
    return bw_respond_error(resp, 404, "work: GET /spin?us=N or /block?ms=N");
}

BW_DEFINE_PLUGIN(.name = WORK_NAME, .version = "1.0.0",
                 .description = "Burns or sleeps a known time per call (make bench)",
                 .flags = WORK_FLAGS, .init = bw_init_stateless, .handle = work_handle)
