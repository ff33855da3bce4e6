/* The compiled step: one plugin call of the lane's hot path, from the request's
 * fields to the whole HTTP answer's bytes, in one C call (see step.py).
 *
 * For one request it lays the bw_request out in this thread's memory, calls
 * `handle`, checks the answer exactly as backworks/httpspec.py and abi/marshal.py
 * do, renders the answer exactly as http/lane/wire.py's render() does, and
 * releases the plugin's memory once. Whatever it does not render itself (a failed
 * call, an answer the checks would refuse, a quoted media type, non-ASCII header
 * text, 204/304, an answer larger than the output buffer, a plugin header that
 * overrides a global one) is left in the bw_response unreleased: the Python path
 * reads it, checks it, renders it and releases it, so each rule has one
 * definition in Python and this file only answers what it is sure to answer alike.
 *
 * The request's strings and body are never copied: they point into the caller's
 * bytes objects, which the caller holds for the whole call.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <backworks/plugin.h>

/* bws_step's answers besides a rendered length. */
#define BWS_NOT_CALLED (-1) /* the plugin was not called: take the Python path */
#define BWS_LEFT (-2)       /* called; its answer is left in `resp`, unreleased */

/* Path parameters and headers one request may carry here (the lane refuses more
 * than 128 fields; a route has a few parameters). More: BWS_NOT_CALLED. */
#define BWS_MAX_PAIRS 256

/* In a rendered call's result, beside the status (low 10 bits): the call took
 * longer than counters->budget; the length is above both. */
#define BWS_OVERRAN (1 << 10)
#define BWS_LENGTH_SHIFT 11

/* The reason phrases by status (200-599), handed in by Python (httpspec.reason)
 * so the two renderings cannot disagree; the bytes are kept alive by step.py. */
static const char *bws_reasons[600];
static size_t bws_reason_lens[600];

static __thread bw_request bws_req;
static __thread bw_header bws_pairs[BWS_MAX_PAIRS];
static __thread int32_t bws_rc;

/* Latency bucket bounds the step can count by; step.py refuses to use the step (the
 * Python path counts instead) if stats.LATENCY_BUCKETS ever holds more. */
#define BWS_MAX_BOUNDS 31

/* The indexes of runtime/gate.py's CallGate.words. */
#define BWS_GATE_ACTIVE 0
#define BWS_GATE_EXCLUSIVE 1
#define BWS_GATE_QUEUED 2
#define BWS_GATE_LIMIT 3

/* One plugin instance as the step calls it, made by step.py. The counters are the
 * ones the host reads when asked (runtime/stats.py folds them into PluginStats
 * before any read); only the event-loop thread writes them. `gate` and `calm` are
 * the runner's CallGate.words and CircuitBreaker.calm, whose one copy lives there:
 * the step reads them and writes neither (see bws_admitted). */
typedef struct bws_plugin {
    const void *desc; /* the bw_plugin */
    void *state;
    const volatile uint32_t *cancelled; /* never set: an inline call is not abandoned */
    const int64_t *gate;                /* CallGate.words */
    const int64_t *calm;                /* CircuitBreaker.calm: closed, no failure counted */
    uint64_t limit;                     /* max_response_bytes */
    double budget;                      /* a call longer than this sets BWS_OVERRAN */
    double last;                        /* seconds the last call took */
    uint64_t total;                     /* every call of `handle` made here, never reset */
    uint64_t calls;                     /* rendered calls (all returned BW_OK) */
    uint64_t buckets[BWS_MAX_BOUNDS + 1]; /* by runtime/stats.py's LATENCY_BUCKETS */
    double sum;
    double samples[2048];               /* the recent latencies, a ring */
    uint32_t cursor;
    uint32_t filled;
} bws_plugin;

/* stats.LATENCY_BUCKETS, handed in by Python. */
static double bws_bounds[BWS_MAX_BOUNDS];
static size_t bws_nbounds;

/* 0, or -1 when there are more bounds than the counters have room for. */
static int bws_set_bounds(const double *bounds, size_t n) {
    if (n > BWS_MAX_BOUNDS) return -1;
    memcpy(bws_bounds, bounds, n * sizeof *bounds);
    bws_nbounds = n;
    return 0;
}

static void bws_set_reason(int status, const char *text, size_t len) {
    if (status >= 0 && status < 600) {
        bws_reasons[status] = text;
        bws_reason_lens[status] = len;
    }
}

static int32_t bws_last_rc(void) { return bws_rc; }

/* RFC 9110 `tchar`. */
static int bws_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Length of the token at s[0..n), 0 when none. */
static size_t bws_token(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n && bws_tchar(s[i])) i++;
    return i;
}

/* httpspec.MEDIA_TYPE without quoted strings: 1 = matches, 0 = unsure (the Python
 * path decides: it refuses what does not match, and knows quoted strings). */
static int bws_media_type(const unsigned char *s, size_t n) {
    size_t i = bws_token(s, n), t;
    if (!i || i >= n || s[i] != '/') return 0;
    i++;
    if (!(t = bws_token(s + i, n - i))) return 0;
    i += t;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
        if (i >= n || s[i] != ';') return 0;
        i++;
        while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
        if (!(t = bws_token(s + i, n - i))) return 0;
        i += t;
        if (i >= n || s[i] != '=') return 0;
        i++;
        if (!(t = bws_token(s + i, n - i))) return 0;
        i += t;
    }
    return 1;
}

/* httpspec.FIELD_VALUE for ASCII values (1), else 0: refused, or non-ASCII text
 * whose rendering (UTF-8 with replacement) the Python path owns. */
static int bws_field_value(const unsigned char *s, size_t n) {
    if (!n) return 1;
    if (s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x7f || (c < 0x20 && c != '\t')) return 0;
    }
    return 1;
}

static int bws_lower_eq(const char *a, size_t n, const char *lower) {
    size_t i = 0;
    for (; i < n && lower[i]; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != lower[i]) return 0;
    }
    return i == n && !lower[i];
}

/* Whether the global block ("Name: value\r\n" lines) has a field named `name`. */
static int bws_global_has(const char *block, const char *name, size_t n) {
    while (*block) {
        const char *colon = strchr(block, ':');
        const char *end = strstr(block, "\r\n");
        if (!colon || !end) return 1; /* not the block we made: let Python decide */
        if ((size_t)(colon - block) == n) {
            size_t i = 0;
            for (; i < n; i++) {
                char a = block[i], b = name[i];
                if (a >= 'A' && a <= 'Z') a = (char)(a + 32);
                if (b >= 'A' && b <= 'Z') b = (char)(b + 32);
                if (a != b) break;
            }
            if (i == n) return 1;
        }
        block = end + 2;
    }
    return 0;
}

/* The headers wire.render drops from a plugin's answer (httpspec.HOST_HEADERS and
 * X-Request-Id); 2 for Date, which it keeps but which replaces the host's own. */
static int bws_host_header(const char *name, size_t n) {
    static const char *const dropped[] = {"content-length", "content-type", "transfer-encoding",
                                          "connection", "keep-alive", "x-request-id"};
    for (size_t i = 0; i < sizeof dropped / sizeof *dropped; i++)
        if (bws_lower_eq(name, n, dropped[i])) return 1;
    return bws_lower_eq(name, n, "date") ? 2 : 0;
}

typedef struct bws_out {
    char *at;
    char *end;
} bws_out;

static int bws_put(bws_out *o, const void *data, size_t n) {
    if ((size_t)(o->end - o->at) < n) return 0;
    if (n) memcpy(o->at, data, n);
    o->at += n;
    return 1;
}

static int bws_put_str(bws_out *o, const char *s) { return bws_put(o, s, strlen(s)); }

static int bws_put_uint(bws_out *o, uint64_t v) {
    char digits[24];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return bws_put(o, digits + i, sizeof digits - i);
}

static void bws_release(bw_response *resp) {
    bw_release_fn release = resp->release;
    if (release) {
        resp->release = NULL; /* cleared first: never released twice */
        release(resp->release_data);
    }
}

/* Renders the answer in `resp` into out[0..cap) as wire.render would; returns the
 * length, or 0 when this file does not render it (see the top of the file). */
static size_t bws_render(const bw_response *resp, const char *rid, size_t rid_len,
                         const char *date, const char *global_block, const char *connection,
                         int head_only, size_t limit, char *out, size_t cap) {
    int32_t status = resp->status;
    size_t body_len = resp->body_len;
    if (status < 200 || status > 599 || status == 204 || status == 304) return 0;
    if (body_len > limit || (body_len && !resp->body)) return 0;
    if (!bws_reasons[status]) return 0;
    const unsigned char *ct = (const unsigned char *)resp->content_type.ptr;
    size_t ct_len = resp->content_type.len;
    if (ct_len && (!ct || !bws_media_type(ct, ct_len))) return 0;
    size_t count = resp->headers_len;
    if (count && !resp->headers) return 0;
    int with_date = 1;
    for (size_t i = 0; i < count; i++) {
        const bw_header *h = &resp->headers[i];
        if ((h->name.len && !h->name.ptr) || (h->value.len && !h->value.ptr)) return 0;
        const unsigned char *name = (const unsigned char *)h->name.ptr;
        if (!h->name.len || bws_token(name, h->name.len) != h->name.len) return 0;
        if (!bws_field_value((const unsigned char *)h->value.ptr, h->value.len)) return 0;
        int kind = bws_host_header(h->name.ptr, h->name.len);
        if (kind == 1) continue;
        if (kind == 2) with_date = 0;
        if (bws_global_has(global_block, h->name.ptr, h->name.len)) return 0;
    }
    bws_out o = {out, out + cap};
    int ok = bws_put_str(&o, "HTTP/1.1 ") && bws_put_uint(&o, (uint64_t)status) &&
             bws_put(&o, " ", 1) && bws_put(&o, bws_reasons[status], bws_reason_lens[status]) &&
             bws_put_str(&o, "\r\nContent-Type: ");
    ok = ok && (ct_len ? bws_put(&o, ct, ct_len) : bws_put_str(&o, "application/json"));
    ok = ok && bws_put_str(&o, "\r\nX-Request-Id: ") && bws_put(&o, rid, rid_len) &&
         bws_put(&o, "\r\n", 2);
    for (size_t i = 0; ok && i < count; i++) {
        const bw_header *h = &resp->headers[i];
        if (bws_host_header(h->name.ptr, h->name.len) == 1) continue;
        ok = bws_put(&o, h->name.ptr, h->name.len) && bws_put(&o, ": ", 2) &&
             bws_put(&o, h->value.ptr, h->value.len) && bws_put(&o, "\r\n", 2);
    }
    if (with_date) ok = ok && bws_put_str(&o, "Date: ") && bws_put_str(&o, date) &&
                        bws_put(&o, "\r\n", 2);
    ok = ok && bws_put_str(&o, "Content-Length: ") && bws_put_uint(&o, body_len) &&
         bws_put(&o, "\r\n", 2) && bws_put_str(&o, global_block) &&
         bws_put_str(&o, connection) && bws_put(&o, "\r\n", 2);
    if (!head_only) ok = ok && bws_put(&o, resp->body, body_len);
    return ok ? (size_t)(o.at - out) : 0;
}

static void bws_observe(bws_plugin *p, double seconds) {
    size_t b = 0;
    while (b < bws_nbounds && seconds > bws_bounds[b]) b++; /* bisect_left: equal belongs */
    p->buckets[b]++;
    p->sum += seconds;
    p->samples[p->cursor] = seconds;
    p->cursor = p->cursor + 1 < 2048 ? p->cursor + 1 : 0;
    if (p->filled < 2048) p->filled++;
}

/* Whether the step may call the plugin without Python's admission: a shared slot is
 * free now and the breaker is closed with no failure counted. The call then starts and
 * ends within this C call on the loop thread, the only thread that touches the gate
 * and the breaker, so nothing can see the slot it would hold: it takes none. A success
 * records nothing (the closed period's ticket, 0 failures: record_success changes
 * nothing); a call it does not render goes back to Python, which takes that same
 * ticket and records its outcome. Anything else: BWS_NOT_CALLED, and Python admits the
 * call as it always does (it may queue, be refused, or be the half-open probe). */
static int bws_admitted(const bws_plugin *p) {
    const int64_t *gate = p->gate;
    return *p->calm && !gate[BWS_GATE_QUEUED] && !gate[BWS_GATE_EXCLUSIVE] &&
           gate[BWS_GATE_ACTIVE] < gate[BWS_GATE_LIMIT];
}

static double bws_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One call (see the top of the file). `texts`: method, path, query, endpoint,
 * request id, then each parameter's and each header's name and value, joined with
 * NULs (`texts_len` bytes; a Python bytes object, so one more NUL follows). Returns
 * (length << BWS_LENGTH_SHIFT) | status (| BWS_OVERRAN) of the answer rendered
 * into `out`, its memory released; or BWS_NOT_CALLED (not admitted here, or a shape
 * the step does not lay out); or BWS_LEFT (bws_last_rc() has the return code). Every call's time goes to p->last; a rendered call is
 * counted in `p` (the Python path counts the others). */
static int64_t bws_step(void *plugin, const char *texts, size_t texts_len, size_t n_params,
                        size_t n_headers, const char *body, size_t body_len, uint32_t timeout_ms,
                        const char *date, const char *global_block, const char *connection,
                        int head_only, void *response, char *out, size_t cap) {
    bws_plugin *p = plugin;
    bw_response *resp = response;
    size_t pairs = n_params + n_headers;
    if (pairs > BWS_MAX_PAIRS || !bws_admitted(p)) return BWS_NOT_CALLED;
    bw_str fields[5];
    const char *at = texts, *end = texts + texts_len;
    for (size_t i = 0; i < 5 + 2 * pairs; i++) {
        if (at > end) return BWS_NOT_CALLED;
        const char *nul = memchr(at, 0, (size_t)(end - at) + 1); /* the last: the end */
        bw_str *s = i < 5 ? &fields[i] : (i - 5) % 2 ? &bws_pairs[(i - 5) / 2].value
                                                      : &bws_pairs[(i - 5) / 2].name;
        s->len = (size_t)(nul - at);
        s->ptr = s->len ? at : NULL; /* an empty string is NULL */
        at = nul + 1;
    }
    if (at != end + 1) return BWS_NOT_CALLED; /* a NUL inside a text: Python's path */
    bw_request *req = &bws_req;
    req->struct_size = (uint32_t)sizeof(bw_request);
    req->method = fields[0];
    req->path = fields[1];
    req->query = fields[2];
    req->endpoint = fields[3];
    req->request_id = fields[4];
    req->params = n_params ? bws_pairs : NULL;
    req->params_len = n_params;
    req->headers = n_headers ? bws_pairs + n_params : NULL;
    req->headers_len = n_headers;
    req->body = body_len ? (const uint8_t *)body : NULL;
    req->body_len = body_len;
    req->timeout_ms = timeout_ms;
    req->cancelled = p->cancelled;
    memset(resp, 0, sizeof *resp);
    resp->struct_size = (uint32_t)sizeof(bw_response);
    double started = bws_now();
    int32_t rc = ((const bw_plugin *)p->desc)->handle(p->state, req, resp);
    double took = bws_now() - started;
    p->last = took;
    p->total++;
    bws_rc = rc;
    if (rc != BW_OK) return BWS_LEFT;
    size_t n = bws_render(resp, fields[4].ptr ? fields[4].ptr : "", fields[4].len, date, global_block, connection, head_only,
                          (size_t)p->limit, out, cap);
    if (!n) return BWS_LEFT;
    int32_t status = resp->status;
    bws_release(resp);
    p->calls++;
    bws_observe(p, took);
    return ((int64_t)n << BWS_LENGTH_SHIFT) | (took > p->budget ? BWS_OVERRAN : 0) | status;
}
