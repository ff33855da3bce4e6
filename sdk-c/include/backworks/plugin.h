/*
 * backworks/plugin.h -- the Backworks plugin ABI, version 1.0.
 *
 * This header is the one C rendering of the contract in design/ABI.md. The host
 * reads the declarations between its BW_CDEF markers with cffi, and the
 * Rust SDK mirrors them with #[repr(C)] types; tests compare all three, field by
 * field, so a change here is a change for every plugin ever built. Names are
 * binding: renaming anything is an ABI break.
 *
 * Rules the structs cannot express (ABI.md section 4):
 *   1. Nothing crosses the boundary owned. What the host passes is valid for the
 *      call only; what the plugin returns stays the plugin's until the host calls
 *      its `release` callback.
 *   2. The host copies what it needs out of a response and then calls `release`
 *      exactly once, on every path: success, failure, a late return after a
 *      timeout, shutdown.
 *   3. The host keeps a request's memory alive until the native call returned,
 *      even when it already answered the client with a timeout.
 *   4. Without BW_FLAG_THREAD_SAFE the host never runs two calls on one state at
 *      once.
 *   5. init, health and shutdown never run concurrently with handle on one state.
 *   6. A plugin never calls exit(), never installs signal handlers, and never
 *      unwinds a C++ exception or a Rust panic across the boundary.
 *
 * Evolution: a minor version only appends fields at the end of a struct; every
 * struct that may grow starts with `struct_size`, so each side can tell which
 * fields the other one knows. A new major version is a new contract; the host
 * refuses a descriptor whose major differs from its own.
 *
 * No struct is ever passed or returned by value, only pointers to structs, so any
 * language with a basic C FFI can implement or host this ABI.
 *
 * Valid C99 and C++. The SDK helpers live in <backworks/sdk.h>.
 */
#ifndef BACKWORKS_PLUGIN_H
#define BACKWORKS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The host hands the lines between the two marker lines below to cffi: keep
 * them to plain declarations and `#define NAME <integer literal>` lines. */
/* BW_CDEF_BEGIN */

/* Version of this header. BW_ABI_VERSION, below, packs them as (major << 16) | minor. */
#define BW_ABI_VERSION_MAJOR 1
#define BW_ABI_VERSION_MINOR 0

/* Return codes of init, handle, health and the hooks. Any other value is
 * treated as BW_FAIL. Only failures, timeouts and crashes count against a
 * plugin's circuit breaker; a deliberate 4xx/5xx response is BW_OK. */
#define BW_OK 0
#define BW_FAIL 1
#define BW_CANCELLED 2

/* Bits of bw_plugin.flags (a uint64_t). */
/* `handle` may run concurrently on one state. */
#define BW_FLAG_THREAD_SAFE 0x1
/* `handle` never blocks and returns in microseconds, so the host may call it
 * on its event-loop thread. */
#define BW_FLAG_NONBLOCKING 0x2

/* Levels of bw_host.log. */
#define BW_LOG_DEBUG 10
#define BW_LOG_INFO 20
#define BW_LOG_WARN 30
#define BW_LOG_ERROR 40

/* Bytes, not NUL-terminated; UTF-8 where text. `ptr` may be NULL when `len` is 0. */
typedef struct bw_str {
    const char *ptr;
    size_t len;
} bw_str;

/* A name/value pair: a header, a path parameter or a query pair. */
typedef struct bw_header {
    bw_str name;
    bw_str value;
} bw_header;

/* Host services, handed to `init` and valid until `shutdown` returns. */
typedef struct bw_host {
    uint32_t abi_version;  /* BW_ABI_VERSION of the host */
    uint32_t struct_size;  /* sizeof(bw_host) as the host compiled it */
    void *ctx;             /* opaque; pass it back to every host function */
    /* Thread-safe. Lands in the host's structured log tagged with the plugin's
     * name. `level` is one of BW_LOG_*; `message` is `message_len` bytes of UTF-8. */
    void (*log)(void *ctx, int32_t level, const char *message, size_t message_len);
} bw_host;

/* One request. Owned by the host and valid only until the call returns. */
typedef struct bw_request {
    uint32_t struct_size;
    bw_str method;         /* "GET", "POST", ... */
    bw_str path;           /* the request path, percent-decoded */
    bw_str query;          /* the raw query string, without '?' */
    bw_str endpoint;       /* the configured route that matched, e.g. "/weather/{city}" */
    const bw_header *params;  /* path parameters from the route */
    size_t params_len;
    const bw_header *headers; /* request headers, names lower-case */
    size_t headers_len;
    const uint8_t *body;
    size_t body_len;
    bw_str request_id;     /* the id the host logs this request under */
    uint32_t timeout_ms;   /* the budget the host gives this call; 0 = none */
    /* Becomes non-zero when the host has given up (timeout, client gone,
     * shutdown). A long call polls it and returns BW_CANCELLED. */
    const volatile uint32_t *cancelled;
} bw_request;

/* Release callback of a response: frees everything its pointers point into. */
typedef void (*bw_release_fn)(void *release_data);

/* One response. The host zero-initialises it and sets `struct_size` before the
 * call; the plugin fills the rest. The host copies the response out and then
 * calls `release(release_data)` exactly once when `release` is not NULL. */
typedef struct bw_response {
    uint32_t struct_size;  /* set by the host */
    int32_t status;        /* HTTP status */
    bw_str content_type;   /* empty = "application/json" */
    const bw_header *headers; /* extra response headers */
    size_t headers_len;
    const uint8_t *body;
    size_t body_len;
    bw_release_fn release; /* NULL, or frees what the pointers above point into */
    void *release_data;    /* passed to `release` */
} bw_response;

/* The descriptor. It has static storage duration: the host reads it for as
 * long as the library is loaded. */
typedef struct bw_plugin {
    uint32_t abi_version;  /* BW_ABI_VERSION the plugin was built against */
    uint32_t struct_size;  /* sizeof(bw_plugin) as the plugin compiled it */
    const char *name;      /* NUL-terminated, [a-z0-9][a-z0-9_-]{0,63} */
    const char *version;   /* NUL-terminated semantic version of the plugin */
    const char *description; /* NUL-terminated, one line */
    uint64_t flags;        /* BW_FLAG_* bits */

    /* Required. Creates the plugin's state from its JSON config: `config_len`
     * bytes of UTF-8, also NUL-terminated for convenience. On failure returns
     * BW_FAIL and may put a message in `error->body` (and a `release`). */
    int32_t (*init)(const bw_host *host, const char *config_json, size_t config_len,
                    void **state, bw_response *error);

    /* Required. Serves one request. */
    int32_t (*handle)(void *state, const bw_request *req, bw_response *resp);

    /* Optional (NULL). Reports status 200 = healthy, 429 = degraded,
     * 503 = unhealthy; the body carries JSON details. */
    int32_t (*health)(void *state, bw_response *report);

    /* Optional. Frees the state; called once, after the last call returned. */
    void (*shutdown)(void *state);

    /* Optional hook run before an endpoint's handler. Leaving `resp->status`
     * 0 lets the request go on; setting it answers at once (an auth plugin's 401). */
    int32_t (*on_request)(void *state, const bw_request *req, bw_response *resp);

    /* Optional hook run after the handler. `out->status` 0 keeps `upstream`;
     * otherwise `out` replaces it. */
    int32_t (*on_response)(void *state, const bw_request *req,
                           const bw_response *upstream, bw_response *out);
} bw_plugin;

/* The one exported symbol. Returns a descriptor with static storage duration,
 * or NULL when the plugin cannot serve a host of `host_abi_version` (the host
 * reports "plugin declined host ABI x.y"). It must have no side effects beyond
 * returning the pointer: discovery calls it. Define it with BW_EXPORT (or the
 * BW_DEFINE_PLUGIN macro of <backworks/sdk.h>) so it is visible. */
const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version);

/* BW_CDEF_END */

#define BW_ABI_VERSION ((uint32_t)((BW_ABI_VERSION_MAJOR << 16) | BW_ABI_VERSION_MINOR))

/* The name of the one exported symbol, for hosts that look it up by string. */
#define BW_ENTRY_SYMBOL "backworks_plugin_entry"

/* Symbol visibility for the entry point. */
#if defined(_WIN32) || defined(__CYGWIN__)
#  define BW_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#  define BW_EXPORT __attribute__((visibility("default")))
#else
#  define BW_EXPORT
#endif

#ifdef __cplusplus
}
#endif

#endif /* BACKWORKS_PLUGIN_H */
