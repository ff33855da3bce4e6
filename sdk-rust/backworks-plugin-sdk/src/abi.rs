//! The `#[repr(C)]` mirror of `sdk-c/include/backworks/plugin.h`, ABI 1.0.
//!
//! The C header is the one rendering of the contract (`design/ABI.md`); these
//! types copy it field by field, in the same order, with the same names. A test
//! (`tests/layout.rs`) compiles a C program against the header and compares every
//! `sizeof`, `offsetof` and constant with [`layout_report`], so the two cannot
//! drift. Renaming anything here is an ABI break.
//!
//! Plugins rarely touch these types: [`export_plugin!`](crate::export_plugin)
//! builds the descriptor and the boundary functions. They are public for hosts
//! written in Rust and for plugins that want to speak the ABI by hand.
//!
//! Rules the types cannot express (ABI.md section 4): nothing crosses the boundary
//! owned; the host copies a response and calls its `release` exactly once; without
//! [`BW_FLAG_THREAD_SAFE`] the host never runs two calls on one state at once; a
//! plugin never unwinds a panic across the boundary.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};
use std::mem::{offset_of, size_of};

/// Major version of the ABI this SDK speaks. Hosts refuse another major.
pub const BW_ABI_VERSION_MAJOR: u32 = 1;
/// Minor version of the ABI this SDK speaks. Minors only append fields.
pub const BW_ABI_VERSION_MINOR: u32 = 0;
/// `(BW_ABI_VERSION_MAJOR << 16) | BW_ABI_VERSION_MINOR`.
pub const BW_ABI_VERSION: u32 = (BW_ABI_VERSION_MAJOR << 16) | BW_ABI_VERSION_MINOR;

/// Return code: the call did its job (a deliberate 404 is a success of the call).
pub const BW_OK: i32 = 0;
/// Return code: the plugin failed; the response body may carry a message.
pub const BW_FAIL: i32 = 1;
/// Return code: the plugin saw the request's cancel flag and stopped.
pub const BW_CANCELLED: i32 = 2;

/// Descriptor flag: `handle` may run concurrently on one state.
pub const BW_FLAG_THREAD_SAFE: u64 = 0x1;
/// Descriptor flag: `handle` never blocks and returns in microseconds, so the
/// host may call it on its event-loop thread.
pub const BW_FLAG_NONBLOCKING: u64 = 0x2;

/// Log level of [`bw_host::log`]: debugging detail.
pub const BW_LOG_DEBUG: i32 = 10;
/// Log level of [`bw_host::log`]: normal operation.
pub const BW_LOG_INFO: i32 = 20;
/// Log level of [`bw_host::log`]: something unexpected that was handled.
pub const BW_LOG_WARN: i32 = 30;
/// Log level of [`bw_host::log`]: something failed.
pub const BW_LOG_ERROR: i32 = 40;

/// The name of the one exported symbol.
pub const BW_ENTRY_SYMBOL: &str = "backworks_plugin_entry";

/// Bytes, not NUL-terminated; UTF-8 where text. `ptr` may be NULL when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_str {
    /// First byte, or NULL when `len` is 0.
    pub ptr: *const c_char,
    /// Number of bytes.
    pub len: usize,
}

/// A name/value pair: a header, a path parameter or a query pair.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_header {
    /// The name (header names arrive lower-case).
    pub name: bw_str,
    /// The value.
    pub value: bw_str,
}

/// `void (*log)(void *ctx, int32_t level, const char *message, size_t message_len)`.
pub type bw_log_fn =
    unsafe extern "C" fn(ctx: *mut c_void, level: i32, message: *const c_char, message_len: usize);

/// Host services, handed to `init` and valid until `shutdown` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_host {
    /// `BW_ABI_VERSION` of the host.
    pub abi_version: u32,
    /// `sizeof(bw_host)` as the host compiled it.
    pub struct_size: u32,
    /// Opaque; passed back to every host function.
    pub ctx: *mut c_void,
    /// Thread-safe logging into the host's structured log, tagged with the plugin's name.
    pub log: Option<bw_log_fn>,
}

/// One request. Owned by the host and valid only until the call returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_request {
    /// `sizeof(bw_request)` as the host compiled it.
    pub struct_size: u32,
    /// "GET", "POST", ...
    pub method: bw_str,
    /// The request path, percent-decoded.
    pub path: bw_str,
    /// The raw query string, without `?`.
    pub query: bw_str,
    /// The configured route that matched, e.g. `/weather/{city}`.
    pub endpoint: bw_str,
    /// Path parameters from the route.
    pub params: *const bw_header,
    /// Number of `params`.
    pub params_len: usize,
    /// Request headers, names lower-case.
    pub headers: *const bw_header,
    /// Number of `headers`.
    pub headers_len: usize,
    /// The request body.
    pub body: *const u8,
    /// Number of bytes in `body`.
    pub body_len: usize,
    /// The id the host logs this request under.
    pub request_id: bw_str,
    /// The budget the host gives this call in milliseconds; 0 = none.
    pub timeout_ms: u32,
    /// `const volatile uint32_t *`: non-zero once the host has given up on the call.
    pub cancelled: *const u32,
}

/// `void (*)(void *release_data)`: frees everything a response points into.
pub type bw_release_fn = unsafe extern "C" fn(release_data: *mut c_void);

/// One response. The host zero-initialises it and sets `struct_size`; the plugin
/// fills the rest; the host copies it out and calls `release(release_data)` once.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_response {
    /// Set by the host.
    pub struct_size: u32,
    /// HTTP status.
    pub status: i32,
    /// Empty means `application/json`.
    pub content_type: bw_str,
    /// Extra response headers.
    pub headers: *const bw_header,
    /// Number of `headers`.
    pub headers_len: usize,
    /// The response body.
    pub body: *const u8,
    /// Number of bytes in `body`.
    pub body_len: usize,
    /// NULL, or frees what the pointers above point into.
    pub release: Option<bw_release_fn>,
    /// Passed to `release`.
    pub release_data: *mut c_void,
}

/// `init`: creates the plugin's state from its JSON config.
pub type bw_init_fn = unsafe extern "C" fn(
    host: *const bw_host,
    config_json: *const c_char,
    config_len: usize,
    state: *mut *mut c_void,
    error: *mut bw_response,
) -> i32;
/// `handle`: serves one request.
pub type bw_handle_fn =
    unsafe extern "C" fn(state: *mut c_void, req: *const bw_request, resp: *mut bw_response) -> i32;
/// `health`: reports 200 healthy, 429 degraded or 503 unhealthy, with JSON details.
pub type bw_health_fn = unsafe extern "C" fn(state: *mut c_void, report: *mut bw_response) -> i32;
/// `shutdown`: frees the state; called once, after the last call returned.
pub type bw_shutdown_fn = unsafe extern "C" fn(state: *mut c_void);
/// `on_request`: runs before an endpoint's handler; status 0 lets the request go on.
pub type bw_on_request_fn =
    unsafe extern "C" fn(state: *mut c_void, req: *const bw_request, resp: *mut bw_response) -> i32;
/// `on_response`: runs after the handler; status 0 keeps `upstream`.
pub type bw_on_response_fn = unsafe extern "C" fn(
    state: *mut c_void,
    req: *const bw_request,
    upstream: *const bw_response,
    out: *mut bw_response,
) -> i32;

/// The descriptor, with static storage duration: the host reads it for as long as
/// the library is loaded.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bw_plugin {
    /// `BW_ABI_VERSION` the plugin was built against.
    pub abi_version: u32,
    /// `sizeof(bw_plugin)` as the plugin compiled it.
    pub struct_size: u32,
    /// NUL-terminated, `[a-z0-9][a-z0-9_-]{0,63}`.
    pub name: *const c_char,
    /// NUL-terminated semantic version of the plugin.
    pub version: *const c_char,
    /// NUL-terminated, one line.
    pub description: *const c_char,
    /// `BW_FLAG_*` bits.
    pub flags: u64,
    /// Required.
    pub init: Option<bw_init_fn>,
    /// Required.
    pub handle: Option<bw_handle_fn>,
    /// Optional (NULL).
    pub health: Option<bw_health_fn>,
    /// Optional (NULL).
    pub shutdown: Option<bw_shutdown_fn>,
    /// Optional (NULL).
    pub on_request: Option<bw_on_request_fn>,
    /// Optional (NULL).
    pub on_response: Option<bw_on_response_fn>,
}

/// `const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version)`.
pub type bw_entry_fn = unsafe extern "C" fn(host_abi_version: u32) -> *const bw_plugin;

/// One struct of the mirror: its C name, size and each field's name and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// The C type name, e.g. `"bw_request"`.
    pub name: &'static str,
    /// `size_of` the Rust mirror.
    pub size: usize,
    /// `(field, offset)` in declaration order.
    pub fields: Vec<(&'static str, usize)>,
}

macro_rules! layouts {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {
        vec![$(StructLayout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: vec![$((stringify!($field), offset_of!($ty, $field))),*],
        }),*]
    };
}

/// The layout of every struct of the mirror, for comparison with a C compiler's.
pub fn struct_layouts() -> Vec<StructLayout> {
    layouts! {
        bw_str { ptr, len }
        bw_header { name, value }
        bw_host { abi_version, struct_size, ctx, log }
        bw_request {
            struct_size, method, path, query, endpoint, params, params_len, headers, headers_len,
            body, body_len, request_id, timeout_ms, cancelled
        }
        bw_response { struct_size, status, content_type, headers, headers_len, body, body_len, release, release_data }
        bw_plugin {
            abi_version, struct_size, name, version, description, flags, init, handle, health, shutdown,
            on_request, on_response
        }
    }
}

/// Every integer constant of the header, by its C name.
pub fn constants() -> Vec<(&'static str, u64)> {
    vec![
        ("BW_ABI_VERSION_MAJOR", u64::from(BW_ABI_VERSION_MAJOR)),
        ("BW_ABI_VERSION_MINOR", u64::from(BW_ABI_VERSION_MINOR)),
        ("BW_ABI_VERSION", u64::from(BW_ABI_VERSION)),
        ("BW_OK", BW_OK as u64),
        ("BW_FAIL", BW_FAIL as u64),
        ("BW_CANCELLED", BW_CANCELLED as u64),
        ("BW_FLAG_THREAD_SAFE", BW_FLAG_THREAD_SAFE),
        ("BW_FLAG_NONBLOCKING", BW_FLAG_NONBLOCKING),
        ("BW_LOG_DEBUG", BW_LOG_DEBUG as u64),
        ("BW_LOG_INFO", BW_LOG_INFO as u64),
        ("BW_LOG_WARN", BW_LOG_WARN as u64),
        ("BW_LOG_ERROR", BW_LOG_ERROR as u64),
    ]
}

/// The mirror's layout as text, one fact per line, sorted:
/// `sizeof bw_str 16`, `offsetof bw_str len 8`, `const BW_OK 0`.
///
/// A C program compiled against `plugin.h` prints the same lines; tests compare the
/// two outputs (see `tests/layout.rs` and the `abi_layout` example).
pub fn layout_report() -> String {
    let mut lines = Vec::new();
    for s in struct_layouts() {
        lines.push(format!("sizeof {} {}", s.name, s.size));
        for (field, offset) in &s.fields {
            lines.push(format!("offsetof {} {} {}", s.name, field, offset));
        }
    }
    for (name, value) in constants() {
        lines.push(format!("const {name} {value}"));
    }
    lines.sort();
    lines.join("\n") + "\n"
}
