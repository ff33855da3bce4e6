//! `Request` and `Response`: the plugin's view of one call.
//!
//! A [`Request`] is a copy of the host's `bw_request`, made when the call enters
//! the plugin, so a handler can hold `&Request` across `.await` points without
//! touching host memory. The one thing that is not copied is the cancel flag:
//! [`Request::is_cancelled`] reads the host's word live, which is why a `Request`
//! built by the SDK only ever exists for the duration of the call.
//!
//! A [`Response`] is plain owned data; the SDK moves it into one heap block whose
//! `release` callback the host calls exactly once.

use std::ffi::c_void;
use std::fmt;
use std::time::Duration;

use crate::abi::{bw_header, bw_response, bw_str};
use crate::error::{PluginError, PluginResult};
use crate::json::{self, ToJson, Value, ValueWriter, WriteJson};
use crate::view::RequestView;

/// Content type of [`Response::text`] and of failure messages.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Where `is_cancelled` looks.
#[derive(Clone, Copy)]
pub(crate) enum Cancel {
    /// Built by hand (tests): never cancelled.
    Never,
    /// Built by hand and marked cancelled (tests).
    Always,
    /// The host's `const volatile uint32_t *cancelled`, valid for the call only.
    Host(*const u32),
}

// SAFETY: the host's cancel word is only ever read (volatile), and a `Request`
// holding it is created by the SDK at the start of a call and dropped before the
// call returns, while the host keeps the word alive (ABI rule 3).
unsafe impl Send for Cancel {}
// SAFETY: as above; concurrent reads of the word are fine.
unsafe impl Sync for Cancel {}

impl Cancel {
    pub(crate) fn is_set(self) -> bool {
        match self {
            Cancel::Never => false,
            Cancel::Always => true,
            // SAFETY: the host keeps the word alive until the call returns, and no
            // request or view holding it outlives the call. Volatile, as the header
            // declares it: another thread writes it.
            Cancel::Host(word) => !word.is_null() && unsafe { std::ptr::read_volatile(word) } != 0,
        }
    }
}

/// One HTTP request routed to the plugin.
///
/// Strings are decoded as UTF-8 (invalid bytes become U+FFFD); the body stays bytes.
pub struct Request {
    /// "GET", "POST", ...
    pub method: String,
    /// The request path, percent-decoded, e.g. `/weather/london`.
    pub path: String,
    /// The raw query string without `?`, e.g. `units=imperial&days=2`.
    pub query: String,
    /// The configured route that matched, e.g. `/weather/{city}` (may be empty).
    pub endpoint: String,
    /// Path parameters from the route, e.g. `("city", "london")`.
    pub params: Vec<(String, String)>,
    /// Request headers; names are lower-case.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// The id the host logs this request under.
    pub request_id: String,
    /// The budget the host gives this call in milliseconds; 0 = none.
    pub timeout_ms: u32,
    pub(crate) cancel: Cancel,
}

impl Request {
    /// A request built by hand, for unit tests of a plugin's logic.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            endpoint: String::new(),
            params: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            request_id: String::new(),
            timeout_ms: 0,
            cancel: Cancel::Never,
        }
    }

    /// With this raw query string (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Request {
        self.query = query.into();
        self
    }

    /// With this route pattern, e.g. `/weather/{city}`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Request {
        self.endpoint = endpoint.into();
        self
    }

    /// With one more path parameter.
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.params.push((name.into(), value.into()));
        self
    }

    /// With one more header (the name is lower-cased, as the host does).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// With this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Marked as cancelled, to test how a handler stops.
    pub fn cancelled(mut self) -> Request {
        self.cancel = Cancel::Always;
        self
    }

    /// The path parameter `name` (e.g. `"city"` of `/weather/{city}`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query's `name=value` pairs, percent-decoded (`+` is a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The first query parameter called `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body as text, when it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> PluginResult<Value> {
        Ok(json::from_slice(&self.body)?)
    }

    /// The call's budget, when the host set one.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(u64::from(self.timeout_ms)))
    }

    /// True once the host has given up on this call (timeout, client gone,
    /// shutdown). A long handler polls it and returns
    /// `Err(PluginError::Cancelled)` (or uses [`check_cancelled`](Request::check_cancelled)).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_set()
    }

    /// A borrowed view of this request: what
    /// [`handle_view`](crate::BackworksPlugin::handle_view) receives.
    pub fn view(&self) -> RequestView<'_> {
        RequestView::of(self)
    }

    /// `Err(PluginError::Cancelled)` once the host has given up, for `?`.
    pub fn check_cancelled(&self) -> PluginResult<()> {
        if self.is_cancelled() {
            Err(PluginError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Copies a host request.
    ///
    /// # Safety
    /// `raw` and everything it points to must be valid for the call, as the host
    /// guarantees, and the result must not outlive the call.
    pub(crate) unsafe fn from_raw(raw: &crate::abi::bw_request) -> Request {
        Request {
            method: text(&raw.method),
            path: text(&raw.path),
            query: text(&raw.query),
            endpoint: text(&raw.endpoint),
            params: pairs(raw.params, raw.params_len),
            headers: pairs(raw.headers, raw.headers_len),
            body: bytes(raw.body, raw.body_len).to_vec(),
            request_id: text(&raw.request_id),
            timeout_ms: raw.timeout_ms,
            cancel: Cancel::Host(raw.cancelled),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("endpoint", &self.endpoint)
            .field("params", &self.params)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("request_id", &self.request_id)
            .field("timeout_ms", &self.timeout_ms)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `%XX` escapes and `+` decoded; invalid escapes kept as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bytes of a host pointer and length; NULL or empty is the empty slice.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` readable bytes for the call.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

unsafe fn text(s: &bw_str) -> String {
    String::from_utf8_lossy(bytes(s.ptr.cast(), s.len)).into_owned()
}

unsafe fn pairs(ptr: *const bw_header, len: usize) -> Vec<(String, String)> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(ptr, len)
        .iter()
        .map(|h| (text(&h.name), text(&h.value)))
        .collect()
}

/// One HTTP response from the plugin.
///
/// ```
/// use backworks_plugin_sdk::*;
///
/// let ok = Response::json(200, json!({"temperature": 25}));
/// assert_eq!(ok.body_str(), Some(r#"{"temperature":25}"#));
/// let missing = Response::error(404, "unknown city \"atlantis\"");
/// assert_eq!(missing.body_json().unwrap()["error"], "unknown city \"atlantis\"");
/// let text = Response::text(200, "pong").with_header("cache-control", "no-store");
/// assert_eq!(text.content_type, "text/plain; charset=utf-8");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The content type; empty means `application/json`.
    pub content_type: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            content_type: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `value` serialised as the JSON body.
    pub fn json(status: u16, value: impl ToJson) -> Response {
        let mut body = Vec::new();
        value.to_json().write_json(&mut body);
        Response::new(status).with_body(body)
    }

    /// A JSON body written straight into the response's buffer by `write` (see
    /// [`json::write`]): no [`Value`] tree, one buffer of `capacity` bytes to start
    /// with (give about the size of a typical answer, and it is allocated once).
    /// The bytes are those [`Response::json`] makes of the same content.
    ///
    /// ```
    /// use backworks_plugin_sdk::*;
    /// let resp = Response::json_with(200, 64, |w| w.object(|o| {
    ///     o.field("temperature", 25).field("units", "metric");
    /// }));
    /// assert_eq!(resp, Response::ok(json!({"temperature": 25, "units": "metric"})));
    /// ```
    pub fn json_with(
        status: u16,
        capacity: usize,
        write: impl FnOnce(ValueWriter<'_>),
    ) -> Response {
        let mut body = Vec::with_capacity(capacity);
        json::write(&mut body, write);
        Response::new(status).with_body(body)
    }

    /// 200 with `value` as the JSON body.
    pub fn ok(value: impl ToJson) -> Response {
        Response::json(200, value)
    }

    /// A body that already is JSON text.
    pub fn json_text(status: u16, json: impl Into<String>) -> Response {
        Response::new(status).with_body(json.into())
    }

    /// Plain text (`text/plain; charset=utf-8`).
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .with_content_type(TEXT_PLAIN)
            .with_body(text.into())
    }

    /// The JSON error envelope `{"error": message}`, for deliberate 4xx/5xx answers.
    pub fn error(status: u16, message: impl fmt::Display) -> Response {
        Response::json(status, crate::json!({"error": message.to_string()}))
    }

    /// 404 with `{"error": message}`.
    pub fn not_found(message: impl fmt::Display) -> Response {
        Response::error(404, message)
    }

    /// 400 with `{"error": message}`.
    pub fn bad_request(message: impl fmt::Display) -> Response {
        Response::error(400, message)
    }

    /// With one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With this content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Response {
        self.content_type = content_type.into();
        self
    }

    /// With this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The body as text, when it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> PluginResult<Value> {
        Ok(json::from_slice(&self.body)?)
    }

    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Copies a response the host hands in (the `upstream` of `on_response`).
    ///
    /// # Safety
    /// `raw` and everything it points to must be valid for the call.
    pub(crate) unsafe fn from_raw(raw: &bw_response) -> Response {
        Response {
            status: u16::try_from(raw.status).unwrap_or(0),
            content_type: text(&raw.content_type),
            headers: pairs(raw.headers, raw.headers_len),
            body: bytes(raw.body, raw.body_len).to_vec(),
        }
    }

    /// Moves this response into `out`: one heap block that the host frees through
    /// `release` (exactly once, ABI rule 2), with this library's allocator.
    ///
    /// # Safety
    /// `out` must point to a host-owned `bw_response` that holds no earlier answer.
    pub(crate) unsafe fn write_to(self, out: *mut bw_response) {
        let mut block = Box::new(Block {
            content_type: self.content_type,
            pairs: self.headers,
            headers: Vec::new(),
            body: self.body,
        });
        // The `bw_header`s point into the strings' heap buffers, which stay put when
        // the block moves; the block itself lives on the heap until `release`.
        block.headers = block
            .pairs
            .iter()
            .map(|(k, v)| bw_header {
                name: str_of(k),
                value: str_of(v),
            })
            .collect();
        let out = &mut *out;
        out.status = i32::from(self.status);
        out.content_type = str_of(&block.content_type);
        out.headers = if block.headers.is_empty() {
            std::ptr::null()
        } else {
            block.headers.as_ptr()
        };
        out.headers_len = block.headers.len();
        out.body = if block.body.is_empty() {
            std::ptr::null()
        } else {
            block.body.as_ptr()
        };
        out.body_len = block.body.len();
        out.release = Some(release_block);
        out.release_data = Box::into_raw(block).cast::<c_void>();
    }
}

/// Everything one response points into.
struct Block {
    content_type: String,
    pairs: Vec<(String, String)>,
    headers: Vec<bw_header>,
    body: Vec<u8>,
}

fn str_of(s: &str) -> bw_str {
    bw_str {
        ptr: if s.is_empty() {
            std::ptr::null()
        } else {
            s.as_ptr().cast()
        },
        len: s.len(),
    }
}

/// The `release` callback of every response the SDK writes.
unsafe extern "C" fn release_block(data: *mut c_void) {
    if !data.is_null() {
        // Dropping owned strings and vectors cannot panic; nothing to catch.
        drop(Box::from_raw(data.cast::<Block>()));
    }
}

/// Answers a failed call: `message` as text in `out`, status 0, like the C SDK's
/// `bw_fail`. The host logs the message next to `BW_FAIL`.
///
/// # Safety
/// As for [`Response::write_to`]; a NULL `out` is ignored.
pub(crate) unsafe fn write_failure(out: *mut bw_response, message: &str) {
    if !out.is_null() {
        Response::text(0, message).write_to(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_parameters() {
        let req = Request::new("GET", "/w")
            .with_query("city=new+york&units=%69mperial&bad=%zz&flag&=x&e=%E2%82%AC");
        assert_eq!(req.query_param("city").as_deref(), Some("new york"));
        assert_eq!(req.query_param("units").as_deref(), Some("imperial"));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("e").as_deref(), Some("€"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn headers_match_in_any_case() {
        let req = Request::new("GET", "/").with_header("X-Api-Key", "k");
        assert_eq!(req.header("x-api-key"), Some("k"));
        assert_eq!(req.header("X-API-KEY"), Some("k"));
    }

    #[test]
    fn written_responses_point_into_one_released_block() {
        let mut raw: bw_response = unsafe { std::mem::zeroed() };
        let resp = Response::text(201, "hello")
            .with_header("x-a", "1")
            .with_header("x-b", "");
        unsafe { resp.clone().write_to(&mut raw) };
        let copied = unsafe { Response::from_raw(&raw) };
        assert_eq!(copied, resp);
        let release = raw.release.expect("a release callback");
        unsafe { release(raw.release_data) };
    }
}
