//! `RequestView`: one request read in place, without copying it.
//!
//! A [`Request`] copies every field of the host's `bw_request` into owned strings
//! when the call enters the plugin: about a dozen allocations and their frees per
//! call, for fields most handlers read once or never. A [`RequestView`] borrows
//! them instead, for the call's duration (the host keeps them alive until the call
//! returns, ABI rule 3), and is what [`BackworksPlugin::handle_view`] receives.
//!
//! Its fields and methods are `Request`'s, with borrowed types: `&str` for
//! `String`, `&[u8]` for the body, and [`query_param`](RequestView::query_param)
//! gives a `Cow` that borrows when the value needs no decoding.
//!
//! Text is checked as UTF-8 once, when the view is made. A request that is not (a
//! host bug: the ABI says text is UTF-8) is copied into a `Request` with the same
//! lossy decoding as ever, and viewed there; a handler sees the same text either way.
//!
//! [`BackworksPlugin::handle_view`]: crate::BackworksPlugin::handle_view

use std::borrow::Cow;
use std::time::Duration;

use crate::abi::{bw_header, bw_request};
use crate::error::{PluginError, PluginResult};
use crate::http::{bytes, percent_decode, Cancel, Request};
use crate::json::{self, Value};

/// One HTTP request routed to the plugin, borrowed for the call (see the module docs).
///
/// ```
/// use backworks_plugin_sdk::*;
/// let owned = Request::new("GET", "/weather/oslo")
///     .with_param("city", "oslo")
///     .with_query("units=imperial&note=a+b");
/// let req = owned.view();
/// assert_eq!((req.method, req.param("city")), ("GET", Some("oslo")));
/// assert_eq!(req.query_param("units").as_deref(), Some("imperial"));
/// assert_eq!(req.query_param("note").as_deref(), Some("a b"));
/// ```
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// "GET", "POST", ...
    pub method: &'a str,
    /// The request path, percent-decoded, e.g. `/weather/london`.
    pub path: &'a str,
    /// The raw query string without `?`, e.g. `units=imperial&days=2`.
    pub query: &'a str,
    /// The configured route that matched, e.g. `/weather/{city}` (may be empty).
    pub endpoint: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// The id the host logs this request under.
    pub request_id: &'a str,
    /// The budget the host gives this call in milliseconds; 0 = none.
    pub timeout_ms: u32,
    params: Pairs<'a>,
    headers: Pairs<'a>,
    cancel: Cancel,
}

/// Name/value pairs, in the host's memory or in a `Request`.
#[derive(Clone, Copy)]
enum Pairs<'a> {
    /// Checked as UTF-8 when the view was made.
    Host(HostPairs<'a>),
    Owned(&'a [(String, String)]),
}

#[derive(Clone, Copy)]
struct HostPairs<'a>(&'a [bw_header]);

// SAFETY: the pairs are only read, and the host keeps them alive and unchanged for
// the call (ABI rules 1 and 3), which the view's lifetime does not exceed.
unsafe impl Send for HostPairs<'_> {}
// SAFETY: as above.
unsafe impl Sync for HostPairs<'_> {}

impl<'a> Pairs<'a> {
    fn get(self, i: usize) -> Option<(&'a str, &'a str)> {
        match self {
            // SAFETY: checked as UTF-8 in `RequestView::from_raw`, valid for 'a.
            Pairs::Host(HostPairs(raw)) => raw
                .get(i)
                .map(|h| unsafe { (checked_text(&h.name), checked_text(&h.value)) }),
            Pairs::Owned(pairs) => pairs.get(i).map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }

    fn len(self) -> usize {
        match self {
            Pairs::Host(HostPairs(raw)) => raw.len(),
            Pairs::Owned(pairs) => pairs.len(),
        }
    }

    fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

/// The host's `bw_str` as `&str`, or `None` when it is not UTF-8.
///
/// # Safety
/// `s` must point to `len` bytes valid for 'a.
unsafe fn host_text<'a>(s: &crate::abi::bw_str) -> Option<&'a str> {
    std::str::from_utf8(bytes(s.ptr.cast(), s.len)).ok()
}

/// A `bw_str` already checked as UTF-8.
///
/// # Safety
/// As for `host_text`, and the bytes must be UTF-8.
unsafe fn checked_text<'a>(s: &crate::abi::bw_str) -> &'a str {
    std::str::from_utf8_unchecked(bytes(s.ptr.cast(), s.len))
}

/// The host's pairs, when every name and value is UTF-8.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` headers valid for 'a.
unsafe fn host_pairs<'a>(ptr: *const bw_header, len: usize) -> Option<Pairs<'a>> {
    let raw: &'a [bw_header] = if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    };
    raw.iter()
        .all(|h| host_text(&h.name).is_some() && host_text(&h.value).is_some())
        .then_some(Pairs::Host(HostPairs(raw)))
}

impl<'a> RequestView<'a> {
    /// Views the host's request in place, or `None` when some text in it is not
    /// UTF-8 (the caller then copies it into a `Request`, decoding lossily).
    ///
    /// # Safety
    /// `raw` and everything it points to must be valid for 'a, as the host
    /// guarantees for the call, and the view must not outlive the call.
    pub(crate) unsafe fn from_raw(raw: &'a bw_request) -> Option<RequestView<'a>> {
        Some(RequestView {
            method: host_text(&raw.method)?,
            path: host_text(&raw.path)?,
            query: host_text(&raw.query)?,
            endpoint: host_text(&raw.endpoint)?,
            body: bytes(raw.body, raw.body_len),
            request_id: host_text(&raw.request_id)?,
            timeout_ms: raw.timeout_ms,
            params: host_pairs(raw.params, raw.params_len)?,
            headers: host_pairs(raw.headers, raw.headers_len)?,
            cancel: Cancel::Host(raw.cancelled),
        })
    }

    /// A view of an owned request (what [`Request::view`] gives).
    pub fn of(req: &'a Request) -> RequestView<'a> {
        RequestView {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            endpoint: &req.endpoint,
            body: &req.body,
            request_id: &req.request_id,
            timeout_ms: req.timeout_ms,
            params: Pairs::Owned(&req.params),
            headers: Pairs::Owned(&req.headers),
            cancel: req.cancel,
        }
    }

    /// An owned copy, for a handler that keeps the request beyond the call, or for
    /// [`BackworksPlugin::handle`](crate::BackworksPlugin::handle).
    pub fn to_request(&self) -> Request {
        let pairs = |p: Pairs<'_>| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        Request {
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            query: self.query.to_owned(),
            endpoint: self.endpoint.to_owned(),
            params: pairs(self.params),
            headers: pairs(self.headers),
            body: self.body.to_vec(),
            request_id: self.request_id.to_owned(),
            timeout_ms: self.timeout_ms,
            cancel: self.cancel,
        }
    }

    /// The path parameter `name` (e.g. `"city"` of `/weather/{city}`).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The path parameters, in route order.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.params.iter()
    }

    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The request headers (names lower-case), in arrival order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.headers.iter()
    }

    /// The query's `name=value` pairs, percent-decoded (`+` is a space).
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decoded(k), decoded(v))
            })
    }

    /// The first query parameter called `name`, percent-decoded: borrowed from the
    /// query when it holds no `%` or `+`.
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        self.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The body as text, when it is UTF-8.
    pub fn body_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.body).ok()
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> PluginResult<Value> {
        Ok(json::from_slice(self.body)?)
    }

    /// The call's budget, when the host set one.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(u64::from(self.timeout_ms)))
    }

    /// True once the host has given up on this call; see [`Request::is_cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_set()
    }

    /// `Err(PluginError::Cancelled)` once the host has given up, for `?`.
    pub fn check_cancelled(&self) -> PluginResult<()> {
        if self.is_cancelled() {
            Err(PluginError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// `s` percent-decoded, borrowed when there is nothing to decode.
fn decoded(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b == b'%' || b == b'+') {
        Cow::Owned(percent_decode(s))
    } else {
        Cow::Borrowed(s)
    }
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("endpoint", &self.endpoint)
            .field("params", &self.params.iter().collect::<Vec<_>>())
            .field("headers", &self.headers.iter().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .field("request_id", &self.request_id)
            .field("timeout_ms", &self.timeout_ms)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::bw_str;

    fn s(text: &[u8]) -> bw_str {
        bw_str {
            ptr: text.as_ptr().cast(),
            len: text.len(),
        }
    }

    fn raw(method: &[u8], headers: &[bw_header], cancelled: &u32) -> bw_request {
        bw_request {
            struct_size: std::mem::size_of::<bw_request>() as u32,
            method: s(method),
            path: s(b"/weather/oslo"),
            query: s(b"units=%69mperial&days=2"),
            endpoint: s(b"/weather/{city}"),
            params: std::ptr::null(),
            params_len: 0,
            headers: headers.as_ptr(),
            headers_len: headers.len(),
            body: std::ptr::null(),
            body_len: 0,
            request_id: s(b"req-1"),
            timeout_ms: 250,
            cancelled,
        }
    }

    #[test]
    fn reads_the_hosts_request_in_place() {
        let headers = [bw_header {
            name: s(b"x-api-key"),
            value: s(b"k"),
        }];
        let word = 0u32;
        let req = raw(b"GET", &headers, &word);
        let view = unsafe { RequestView::from_raw(&req) }.expect("all UTF-8");
        assert_eq!(view.path.as_ptr(), b"/weather/oslo".as_ptr().cast());
        assert_eq!(view.header("X-API-KEY"), Some("k"));
        assert!(matches!(view.query_param("days"), Some(Cow::Borrowed("2"))));
        assert!(matches!(view.query_param("units"), Some(Cow::Owned(u)) if u == "imperial"));
        assert_eq!(view.param("city"), None);
        assert_eq!(view.timeout(), Some(Duration::from_millis(250)));
        assert!(!view.is_cancelled());
        let owned = view.to_request();
        assert_eq!(owned.header("x-api-key"), Some("k"));
        assert_eq!(format!("{:?}", owned.view()), format!("{view:?}"));
    }

    #[test]
    fn text_that_is_not_utf8_is_left_to_the_lossy_copy() {
        let word = 0u32;
        assert!(unsafe { RequestView::from_raw(&raw(b"G\xffT", &[], &word)) }.is_none());
        let bad = [bw_header {
            name: s(b"x"),
            value: s(b"\xfe"),
        }];
        assert!(unsafe { RequestView::from_raw(&raw(b"GET", &bad, &word)) }.is_none());
    }

    #[test]
    fn agrees_with_the_owned_request() {
        let owned = Request::new("POST", "/x")
            .with_query("a=1&b=x+y&c=%E2%82%AC&flag")
            .with_param("id", "7")
            .with_header("Accept", "*/*")
            .with_body("{\"k\":1}");
        let view = owned.view();
        for name in ["a", "b", "c", "flag", "missing"] {
            assert_eq!(
                view.query_param(name).as_deref(),
                owned.query_param(name).as_deref()
            );
        }
        assert_eq!(view.param("id"), owned.param("id"));
        assert_eq!(view.headers().collect::<Vec<_>>(), vec![("accept", "*/*")]);
        assert_eq!(view.body_json().unwrap(), owned.body_json().unwrap());
        assert!(owned.cancelled().view().is_cancelled());
    }
}
