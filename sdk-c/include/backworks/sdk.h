/*
 * backworks/sdk.h -- small helpers for the chores every C plugin repeats.
 *
 * Everything here is `static inline` over <backworks/plugin.h>: nothing to link,
 * nothing that changes the ABI. Responses built by these helpers own one malloc'd
 * block holding every byte they point into, and set `release` to free it, so the
 * host's "copy, then release exactly once" rule frees it with the plugin's own
 * allocator (which matters on Windows, where each DLL may have its own heap).
 *
 *     #include <backworks/sdk.h>
 *
 *     static int32_t hello(void *state, const bw_request *req, bw_response *resp) {
 *         (void)state; (void)req;
 *         return bw_respond_json(resp, 200, "{\"hello\": \"world\"}");
 *     }
 *
 *     BW_DEFINE_PLUGIN(.name = "hello", .version = "1.0.0",
 *                      .description = "Says hello", .flags = BW_FLAG_THREAD_SAFE,
 *                      .init = bw_init_stateless, .handle = hello);
 */
#ifndef BACKWORKS_SDK_H
#define BACKWORKS_SDK_H

#include <backworks/plugin.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- The descriptor and the entry point in one macro --------------------- */

/* The optional functions a plugin leaves out are meant to be NULL: g++ (C++20)
 * would warn about each one under -Wextra, so the descriptor is defined with that
 * warning off. */
#if defined(__GNUC__) || defined(__clang__)
#  define BW_DESCRIPTOR_BEGIN_                                                    \
      _Pragma("GCC diagnostic push")                                              \
      _Pragma("GCC diagnostic ignored \"-Wmissing-field-initializers\"")
#  define BW_DESCRIPTOR_END_ _Pragma("GCC diagnostic pop")
#else
#  define BW_DESCRIPTOR_BEGIN_
#  define BW_DESCRIPTOR_END_
#endif

/* Defines the plugin's descriptor from designated initialisers (C99, C++20) and
 * exports backworks_plugin_entry, which declines hosts of another major version. */
#define BW_DEFINE_PLUGIN(...)                                                     \
    BW_DESCRIPTOR_BEGIN_                                                          \
    static const bw_plugin bw_plugin_descriptor_ = {                              \
        .abi_version = BW_ABI_VERSION, .struct_size = sizeof(bw_plugin),          \
        __VA_ARGS__};                                                             \
    BW_DESCRIPTOR_END_                                                            \
    BW_EXPORT const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version) { \
        return (host_abi_version >> 16) == BW_ABI_VERSION_MAJOR                   \
                   ? &bw_plugin_descriptor_                                       \
                   : NULL;                                                        \
    }

/* An `init` for plugins with no state and no config. */
static inline int32_t bw_init_stateless(const bw_host *host, const char *config_json,
                                        size_t config_len, void **state, bw_response *error) {
    (void)host; (void)config_json; (void)config_len; (void)error;
    *state = NULL;
    return BW_OK;
}

/* ---- Strings ---------------------------------------------------------------- */

static inline bw_str bw_str_from(const char *cstr) {
    bw_str s;
    s.ptr = cstr;
    s.len = cstr ? strlen(cstr) : 0;
    return s;
}

/* 1 when `s` holds exactly the bytes of the C string `cstr`. */
static inline int bw_str_eq(bw_str s, const char *cstr) {
    size_t n = strlen(cstr);
    return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

/* Copies `s` into `buf` (capacity `cap`) as a C string, truncating if needed. */
static inline const char *bw_str_copy(bw_str s, char *buf, size_t cap) {
    size_t n;
    if (cap == 0) return buf;
    n = s.len < cap - 1 ? s.len : cap - 1;
    if (n) memcpy(buf, s.ptr, n);
    buf[n] = '\0';
    return buf;
}

/* ASCII-only case folding: header names are ASCII tokens, and tolower() follows
 * the host process's locale (in a Turkish one, 'I' does not fold to 'i'). */
static inline int bw_ascii_lower_(unsigned char c) {
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static inline int bw_str_ieq_(bw_str s, const char *cstr) {
    size_t i, n = strlen(cstr);
    if (s.len != n) return 0;
    for (i = 0; i < n; i++)
        if (bw_ascii_lower_((unsigned char)s.ptr[i]) != bw_ascii_lower_((unsigned char)cstr[i]))
            return 0;
    return 1;
}

/* ---- Reading a request ------------------------------------------------------- */

/* The value of request header `name` (any case), or NULL when absent. */
static inline const bw_str *bw_header_get(const bw_request *req, const char *name) {
    size_t i;
    for (i = 0; i < req->headers_len; i++)
        if (bw_str_ieq_(req->headers[i].name, name)) return &req->headers[i].value;
    return NULL;
}

/* The value of path parameter `name` (e.g. "city" of "/weather/{city}"), or NULL. */
static inline const bw_str *bw_param_get(const bw_request *req, const char *name) {
    size_t i;
    for (i = 0; i < req->params_len; i++)
        if (bw_str_eq(req->params[i].name, name)) return &req->params[i].value;
    return NULL;
}

static inline int bw_hex_(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Finds query parameter `name` (compared as raw bytes, not decoded) and writes its
 * percent-decoded value ('+' is a space) into `buf` as a C string, truncated to
 * `cap - 1` bytes; `buf` is "" when the parameter is absent. Returns the full
 * decoded length (more than `cap - 1` means it was cut), or -1 when absent. */
static inline long bw_query_get(const bw_request *req, const char *name, char *buf, size_t cap) {
    const char *q = req->query.ptr, *end;
    size_t name_len = strlen(name);
    if (cap) buf[0] = '\0';
    if (!q) return -1;
    end = q + req->query.len;
    while (q < end) {
        const char *amp = (const char *)memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = (const char *)memchr(q, '=', (size_t)(stop - q));
        const char *key_end = eq ? eq : stop;
        if ((size_t)(key_end - q) == name_len && memcmp(q, name, name_len) == 0) {
            const char *v = eq ? eq + 1 : stop;
            size_t n = 0;
            while (v < stop) {
                char c = *v++;
                if (c == '+') c = ' ';
                else if (c == '%' && stop - v >= 2 && bw_hex_(v[0]) >= 0 && bw_hex_(v[1]) >= 0) {
                    c = (char)(bw_hex_(v[0]) * 16 + bw_hex_(v[1]));
                    v += 2;
                }
                if (cap && n < cap - 1) buf[n] = c;
                n++;
            }
            if (cap) buf[n < cap - 1 ? n : cap - 1] = '\0';
            return (long)n;
        }
        if (!amp) break;
        q = amp + 1;
    }
    return -1;
}

/* 1 once the host has given up on this call: stop and return BW_CANCELLED. */
static inline int bw_is_cancelled(const bw_request *req) {
    return req->cancelled != NULL && *req->cancelled != 0;
}

/* ---- Answering --------------------------------------------------------------- */

static inline void bw_free_block_(void *block) { free(block); }

/* `*size += n`, or 0 when the sum would wrap around. */
static inline int bw_size_add_(size_t *size, size_t n) {
    if (n > (size_t)-1 - *size) return 0;
    *size += n;
    return 1;
}

/* Releases what an earlier answer left in `resp`: with the helpers, the last answer
 * wins (`bw_respond_json(...)` then `return bw_fail(...)`) and nothing leaks. */
static inline void bw_release_previous_(bw_response *resp) {
    if (resp->release) resp->release(resp->release_data);
    resp->release = NULL;
    resp->release_data = NULL;
    resp->headers = NULL;
    resp->headers_len = 0;
}

/* Fills `resp` with copies of everything given, held in one malloc'd block that
 * `release` frees (the given pointers may point into an earlier answer in `resp`,
 * which is released after the copy). `content_type` NULL or "" means
 * application/json. Returns BW_OK, or BW_FAIL when memory ran out or the lengths
 * add up to more than a size_t holds. */
static inline int32_t bw_respond(bw_response *resp, int32_t status, const char *content_type,
                                 const bw_header *headers, size_t headers_len,
                                 const void *body, size_t body_len) {
    size_t i, ct_len = content_type ? strlen(content_type) : 0, size;
    char *block, *cursor;
    if (headers_len > (size_t)-1 / sizeof(bw_header)) return BW_FAIL;
    size = headers_len * sizeof(bw_header);
    if (!bw_size_add_(&size, ct_len) || !bw_size_add_(&size, body_len)) return BW_FAIL;
    for (i = 0; i < headers_len; i++)
        if (!bw_size_add_(&size, headers[i].name.len) || !bw_size_add_(&size, headers[i].value.len))
            return BW_FAIL;
    block = (char *)malloc(size ? size : 1);
    if (!block) return BW_FAIL;
    /* The header array goes first so it is suitably aligned. */
    cursor = block + headers_len * sizeof(bw_header);
    for (i = 0; i < headers_len; i++) {
        bw_header *h = (bw_header *)block + i;
        if (headers[i].name.len) memcpy(cursor, headers[i].name.ptr, headers[i].name.len);
        h->name.ptr = cursor; h->name.len = headers[i].name.len;
        cursor += headers[i].name.len;
        if (headers[i].value.len) memcpy(cursor, headers[i].value.ptr, headers[i].value.len);
        h->value.ptr = cursor; h->value.len = headers[i].value.len;
        cursor += headers[i].value.len;
    }
    if (ct_len) memcpy(cursor, content_type, ct_len);
    if (body_len) memcpy(cursor + ct_len, body, body_len);
    bw_release_previous_(resp); /* only now: the copies above may have come from it */
    resp->content_type.ptr = cursor;
    resp->content_type.len = ct_len;
    resp->body = (const uint8_t *)(cursor + ct_len);
    resp->body_len = body_len;
    resp->headers = headers_len ? (const bw_header *)block : NULL;
    resp->headers_len = headers_len;
    resp->status = status;
    resp->release = bw_free_block_;
    resp->release_data = block;
    return BW_OK;
}

/* Answers with a copy of the NUL-terminated JSON text `json`. */
static inline int32_t bw_respond_json(bw_response *resp, int32_t status, const char *json) {
    return bw_respond(resp, status, NULL, NULL, 0, json, strlen(json));
}

/* Answers with a copy of `text` as text/plain. */
static inline int32_t bw_respond_text(bw_response *resp, int32_t status, const char *text) {
    return bw_respond(resp, status, "text/plain; charset=utf-8", NULL, 0, text, strlen(text));
}

/* Points `resp` at static data: no copy and no `release`. */
static inline int32_t bw_respond_static(bw_response *resp, int32_t status,
                                        const char *content_type, const void *body,
                                        size_t body_len) {
    bw_release_previous_(resp);
    resp->status = status;
    resp->content_type = bw_str_from(content_type);
    resp->body = (const uint8_t *)body;
    resp->body_len = body_len;
    return BW_OK;
}

/* Writes `text` as a JSON string literal (with quotes) into `out`; returns the
 * length it needs, like snprintf, so a first call with cap 0 sizes the buffer. */
static inline size_t bw_json_quote(const char *text, char *out, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    size_t n = 0, limit = cap ? cap - 1 : 0;
    const unsigned char *p = (const unsigned char *)text;
#define BW_PUT_(c) do { if (n < limit) out[n] = (char)(c); n++; } while (0)
    BW_PUT_('"');
    for (; *p; p++) {
        if (*p == '"' || *p == '\\') { BW_PUT_('\\'); BW_PUT_(*p); }
        else if (*p == '\n') { BW_PUT_('\\'); BW_PUT_('n'); }
        else if (*p < 0x20) {
            BW_PUT_('\\'); BW_PUT_('u'); BW_PUT_('0'); BW_PUT_('0');
            BW_PUT_(hex[*p >> 4]); BW_PUT_(hex[*p & 15]);
        } else BW_PUT_(*p);
    }
    BW_PUT_('"');
#undef BW_PUT_
    if (cap) out[n < limit ? n : limit] = '\0';
    return n;
}

/* Answers `{"error": "<message>"}` with `status` (a deliberate 4xx/5xx: BW_OK). */
static inline int32_t bw_respond_error(bw_response *resp, int32_t status, const char *message) {
    size_t quoted = bw_json_quote(message, NULL, 0);
    size_t cap = quoted + sizeof("{\"error\": }");
    char *json = (char *)malloc(cap);
    int32_t rc;
    if (!json) return BW_FAIL;
    memcpy(json, "{\"error\": ", 10);
    bw_json_quote(message, json + 10, quoted + 1);
    json[10 + quoted] = '}';
    rc = bw_respond(resp, status, NULL, NULL, 0, json, 11 + quoted);
    free(json);
    return rc;
}

/* Puts `message` in `resp` (or init's `error`) and returns BW_FAIL, for
 * `return bw_fail(resp, "database unreachable");`. The host logs the message. */
static inline int32_t bw_fail(bw_response *resp, const char *message) {
    bw_respond(resp, 0, "text/plain; charset=utf-8", NULL, 0, message, strlen(message));
    return BW_FAIL;
}

/* ---- Logging through the host ---------------------------------------------- */

/* printf-style logging into the host's structured log; lines over 1 KiB are cut. */
static inline void bw_logf(const bw_host *host, int32_t level, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline void bw_logf(const bw_host *host, int32_t level, const char *fmt, ...) {
    char line[1024];
    int n;
    va_list args;
    if (!host || !host->log) return;
    va_start(args, fmt);
    n = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (n < 0) return;
    host->log(host->ctx, level, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

#define bw_log_debug(host, ...) bw_logf((host), BW_LOG_DEBUG, __VA_ARGS__)
#define bw_log_info(host, ...) bw_logf((host), BW_LOG_INFO, __VA_ARGS__)
#define bw_log_warn(host, ...) bw_logf((host), BW_LOG_WARN, __VA_ARGS__)
#define bw_log_error(host, ...) bw_logf((host), BW_LOG_ERROR, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif /* BACKWORKS_SDK_H */
