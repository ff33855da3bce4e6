/* testkit: one plugin source that the end-to-end tests compile under several names
 * and flag sets (-DKIT_NAME='"x"' -DKIT_FLAGS=...). What it does depends on the path:
 *
 *   .../echo            every request field back as JSON
 *   .../binary          the request body back, as application/octet-stream
 *   .../status?code=N   an empty answer with status N (a deliberate error: BW_OK)
 *   .../fail            BW_FAIL with a message
 *   .../sleep?ms=N      sleeps N ms ignoring cancellation
 *   .../wait?ms=N       sleeps up to N ms, polling `cancelled` (returns BW_CANCELLED)
 *   .../overlap         counts concurrent calls; .../max-overlap reports the maximum
 *   .../log             logs "hello from <name>" through the host
 *   .../headers         answers with an extra header and a text content type
 *   .../version         {"plugin": <name>, "build": KIT_VERSION} (0 unless -DKIT_VERSION=n)
 *   .../thread          {"tid": <the kernel id of the thread the call runs on>}
 *   .../spin?ms=N       burns N ms of the calling thread's CPU time
 *   .../bad?what=W      an answer HTTP cannot carry: W = nul-type (a NUL in the content
 *                       type), ctl-header (a control character in a header value),
 *                       bad-name (a space in a header name), interim (status 101)
 *
 * Hooks: on_request answers 401 when the request has `x-deny`, fails with `x-hook-fail`,
 * sleeps with `x-hook-sleep`; on_response adds `x-hooked-by-<name>` to the upstream answer
 * (keeping upstream's own headers).
 * init sleeps for the config's "init_ms" milliseconds first, if set (a slow start).
 * shutdown appends "<name>\n" to the file named by the config's "marker" key. Built with
 * -DKIT_VERSION=n (the reload tests), init also appends "init <name> v<n>\n" there and
 * shutdown appends "<name> v<n>\n", so each version's init and shutdown can be counted.
 */
#define _GNU_SOURCE /* syscall(SYS_gettid) */
#include <backworks/sdk.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef KIT_NAME
#define KIT_NAME "kit"
#endif
#ifndef KIT_FLAGS
#define KIT_FLAGS 0
#endif
#define KIT_STR_(x) #x
#define KIT_STR(x) KIT_STR_(x)
#ifdef KIT_VERSION
#define KIT_VERSIONED 1
#define KIT_TAG KIT_NAME " v" KIT_STR(KIT_VERSION)
#define KIT_DESCRIPTOR_VERSION "0.1." KIT_STR(KIT_VERSION)
#else
#define KIT_VERSION 0
#define KIT_TAG KIT_NAME
#define KIT_DESCRIPTOR_VERSION "0.1.0"
#endif

typedef struct { char marker[512]; const bw_host *host; } kit_state;

static volatile int active_calls, max_overlap;

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int ends_with(bw_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static long query_long(const bw_request *req, const char *name, long fallback) {
    char buf[32];
    return bw_query_get(req, name, buf, sizeof buf) > 0 ? atol(buf) : fallback;
}

static int32_t kit_init(const bw_host *host, const char *config, size_t len, void **state,
                        bw_response *error) {
    kit_state *st = (kit_state *)calloc(1, sizeof *st);
    const char *m = strstr(config, "\"marker\": \"");
    const char *slow = strstr(config, "\"init_ms\": ");
    (void)len;
    if (slow) sleep_ms(atol(slow + strlen("\"init_ms\": ")));
    if (strstr(config, "\"fail_init\": true")) return bw_fail(error, "kit refuses to start: fail_init is set");
    if (!st) return bw_fail(error, "out of memory");
    if (m) {
        const char *start = m + strlen("\"marker\": \""), *end = strchr(start, '"');
        size_t n = end ? (size_t)(end - start) : 0;
        if (n >= sizeof st->marker) n = sizeof st->marker - 1;
        memcpy(st->marker, start, n);
#ifdef KIT_VERSIONED
        {
            FILE *f = fopen(st->marker, "a");
            if (f) { fputs("init " KIT_TAG "\n", f); fclose(f); }
        }
#endif
    }
    st->host = host;
    *state = st;
    return BW_OK;
}

static void append_field(char *out, size_t cap, const char *key, bw_str value, int comma) {
    char raw[2048], quoted[4200];
    bw_str_copy(value, raw, sizeof raw);
    bw_json_quote(raw, quoted, sizeof quoted);
    snprintf(out + strlen(out), cap - strlen(out), "%s\"%s\": %s", comma ? ", " : "", key, quoted);
}

static void append_pairs(char *out, size_t cap, const char *key, const bw_header *pairs, size_t n) {
    size_t i;
    snprintf(out + strlen(out), cap - strlen(out), ", \"%s\": [", key);
    for (i = 0; i < n; i++) {
        snprintf(out + strlen(out), cap - strlen(out), "%s[", i ? ", " : "");
        append_field(out, cap, "", pairs[i].name, 0);
        append_field(out, cap, "", pairs[i].value, 1);
        strcat(out, "]");
    }
    strcat(out, "]");
}

static int32_t echo(const bw_request *req, bw_response *resp) {
    static __thread char json[65536];
    json[0] = '{'; json[1] = 0;
    append_field(json, sizeof json, "method", req->method, 0);
    append_field(json, sizeof json, "path", req->path, 1);
    append_field(json, sizeof json, "query", req->query, 1);
    append_field(json, sizeof json, "endpoint", req->endpoint, 1);
    append_field(json, sizeof json, "request_id", req->request_id, 1);
    append_pairs(json, sizeof json, "params", req->params, req->params_len);
    append_pairs(json, sizeof json, "headers", req->headers, req->headers_len);
    snprintf(json + strlen(json), sizeof json - strlen(json),
             ", \"body_len\": %zu, \"timeout_ms\": %u, \"cancel_flag\": %s}", req->body_len,
             req->timeout_ms, req->cancelled ? "true" : "false");
    /* The JSON text above used "" as key for array items; rewrite `"": ` away. */
    {
        char *p;
        while ((p = strstr(json, "\"\": ")) != NULL) memmove(p, p + 4, strlen(p + 4) + 1);
    }
    return bw_respond_json(resp, 200, json);
}

static int32_t kit_handle(void *state, const bw_request *req, bw_response *resp) {
    kit_state *st = (kit_state *)state;
    bw_str path = req->path;
    if (ends_with(path, "/binary"))
        return bw_respond(resp, 200, "application/octet-stream", NULL, 0, req->body, req->body_len);
    if (ends_with(path, "/status"))
        return bw_respond_json(resp, (int32_t)query_long(req, "code", 200), "{}");
    if (ends_with(path, "/fail")) return bw_fail(resp, "deliberate failure from " KIT_NAME);
    if (ends_with(path, "/sleep")) {
        sleep_ms(query_long(req, "ms", 100));
        return bw_respond_json(resp, 200, "{\"slept\": true}");
    }
    if (ends_with(path, "/wait")) {
        long waited;
        for (waited = 0; waited < query_long(req, "ms", 100); waited += 5) {
            if (bw_is_cancelled(req)) return BW_CANCELLED;
            sleep_ms(5);
        }
        return bw_respond_json(resp, 200, "{\"waited\": true}");
    }
    if (ends_with(path, "/overlap")) {
        int now = __sync_add_and_fetch(&active_calls, 1);
        if (now > max_overlap) max_overlap = now;
        sleep_ms(query_long(req, "ms", 20));
        __sync_sub_and_fetch(&active_calls, 1);
        return bw_respond_json(resp, 200, "{}");
    }
    if (ends_with(path, "/max-overlap")) {
        char json[64];
        snprintf(json, sizeof json, "{\"max_overlap\": %d}", max_overlap);
        return bw_respond_json(resp, 200, json);
    }
    if (ends_with(path, "/log")) {
        bw_log_info(st->host, "hello from %s", KIT_NAME);
        bw_log_error(st->host, "an error line from %s", KIT_NAME);
        return bw_respond_json(resp, 200, "{\"logged\": true}");
    }
    if (ends_with(path, "/thread")) {
        char json[64];
        snprintf(json, sizeof json, "{\"tid\": %ld}", (long)syscall(SYS_gettid));
        return bw_respond_json(resp, 200, json);
    }
    if (ends_with(path, "/spin")) {
        double start = cpu_seconds(), limit = query_long(req, "ms", 10) / 1000.0;
        volatile unsigned long x = 0;
        while (cpu_seconds() - start < limit) x++;
        return bw_respond_json(resp, 200, "{\"spun\": true}");
    }
    if (ends_with(path, "/bad")) {
        char what[32];
        bw_header h[1];
        bw_query_get(req, "what", what, sizeof what);
        h[0].name = bw_str_from("x-fine");
        h[0].value = bw_str_from("fine");
        if (strcmp(what, "nul-type") == 0) {
            static const char ctype[] = "text/plain\0\r\nX-Injected: 1";
            bw_str ct = { ctype, sizeof ctype - 1 };
            int32_t rc = bw_respond_json(resp, 200, "{}");
            resp->content_type = ct;
            return rc;
        }
        if (strcmp(what, "ctl-header") == 0) h[0].value = bw_str_from("a\rb");
        if (strcmp(what, "bad-name") == 0) h[0].name = bw_str_from("x bad");
        return bw_respond(resp, strcmp(what, "interim") == 0 ? 101 : 200, NULL, h, 1, "{}", 2);
    }
    if (ends_with(path, "/version"))
        return bw_respond_json(resp, 200,
                               "{\"plugin\": \"" KIT_NAME "\", \"build\": " KIT_STR(KIT_VERSION) "}");
    if (ends_with(path, "/headers")) {
        bw_header extra[1];
        extra[0].name = bw_str_from("x-kit");
        extra[0].value = bw_str_from(KIT_NAME);
        return bw_respond(resp, 201, "text/plain; charset=utf-8", extra, 1, "made", 4);
    }
    return echo(req, resp);
}

static int32_t kit_health(void *state, bw_response *report) {
    (void)state;
    return bw_respond_json(report, 200, "{\"ok\": true, \"plugin\": \"" KIT_NAME "\"}");
}

static int32_t kit_on_request(void *state, const bw_request *req, bw_response *resp) {
    (void)state;
    if (bw_header_get(req, "x-hook-fail")) return bw_fail(resp, "hook failure from " KIT_NAME);
    if (bw_header_get(req, "x-hook-sleep")) sleep_ms(2000);
    if (bw_header_get(req, "x-deny")) return bw_respond_error(resp, 401, "denied by " KIT_NAME);
    return BW_OK;
}

static int32_t kit_on_response(void *state, const bw_request *req, const bw_response *up,
                               bw_response *out) {
    /* Replaces the answer with a copy of upstream plus one header of its own. */
    bw_header headers[16];
    char ctype[128];
    size_t i, n = up->headers_len < 15 ? up->headers_len : 15;
    (void)state; (void)req;
    for (i = 0; i < n; i++) headers[i] = up->headers[i];
    headers[n].name = bw_str_from("x-hooked-by-" KIT_NAME);
    headers[n].value = bw_str_from("yes");
    bw_str_copy(up->content_type, ctype, sizeof ctype);
    return bw_respond(out, up->status, ctype, headers, n + 1, up->body, up->body_len);
}

static void kit_shutdown(void *state) {
    kit_state *st = (kit_state *)state;
    if (st->marker[0]) {
        FILE *f = fopen(st->marker, "a");
        if (f) { fputs(KIT_TAG "\n", f); fclose(f); }
    }
    free(st);
}

BW_DEFINE_PLUGIN(.name = KIT_NAME, .version = KIT_DESCRIPTOR_VERSION, .description = "test kit",
                 .flags = KIT_FLAGS, .init = kit_init, .handle = kit_handle,
                 .health = kit_health, .shutdown = kit_shutdown,
                 .on_request = kit_on_request, .on_response = kit_on_response)
