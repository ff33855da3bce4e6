/* hello: the smallest useful Backworks plugin.
 *
 *   GET /plugins/hello            -> {"hello": "world"}
 *   GET /plugins/hello?name=Ada   -> {"hello": "Ada"}
 *
 * Build: cc -shared -fPIC -I ../../include -o libhello.so hello.c
 */
#include <backworks/sdk.h>

static int32_t hello_handle(void *state, const bw_request *req, bw_response *resp) {
    /* Quoting can grow each byte to six ("\u001f"): size for the worst case, so a
     * name of control characters still makes valid JSON. */
    char name[128], quoted[6 * sizeof name + 3], json[sizeof quoted + 16];
    (void)state;
    if (bw_query_get(req, "name", name, sizeof name) < 0) strcpy(name, "world");
    bw_json_quote(name, quoted, sizeof quoted);
    snprintf(json, sizeof json, "{\"hello\": %s}", quoted);
    return bw_respond_json(resp, 200, json);
}

BW_DEFINE_PLUGIN(.name = "hello", .version = "1.0.0",
                 .description = "Says hello to ?name= (or to the world)",
                 .flags = BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING,
                 .init = bw_init_stateless, .handle = hello_handle)
