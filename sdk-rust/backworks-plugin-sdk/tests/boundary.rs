//! The C boundary that `export_plugin!` generates, driven the way a host drives it:
//! through `backworks_plugin_entry` and raw `bw_*` structs.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use backworks_plugin_sdk::abi::*;
use backworks_plugin_sdk::*;

#[derive(Default)]
struct Probe {
    api_key: OnceLock<String>,
    served: AtomicU64,
}

#[async_trait]
impl BackworksPlugin for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    fn description(&self) -> &str {
        "exercises\nthe boundary"
    }
    fn flags(&self) -> PluginFlags {
        PluginFlags::THREAD_SAFE | PluginFlags::NONBLOCKING
    }
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }

    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        if config["panic"] == true {
            panic!("init exploded");
        }
        let key = config["api_key"]
            .as_str()
            .ok_or_else(|| PluginError::config("api_key is required"))?;
        let _ = self.api_key.set(key.to_owned());
        log_info!("probe ready with key {}", key.len());
        Ok(())
    }

    async fn handle(&self, req: &Request) -> PluginResult<Response> {
        self.served.fetch_add(1, Ordering::Relaxed);
        match req.path.as_str() {
            "/panic" => panic!("boom in handle"),
            "/panic-formatted" => panic!("formatted {}", 42),
            "/fail" => Err(PluginError::processing("database unreachable")),
            "/cancel" => {
                req.check_cancelled()?;
                Ok(Response::text(200, "not cancelled"))
            }
            "/echo" => {
                log_debug!("echo {}", req.request_id);
                Ok(Response::ok(json!({
                    "method": req.method,
                    "endpoint": req.endpoint,
                    "city": req.param("city"),
                    "q": req.query_param("q"),
                    "header": req.header("X-Test"),
                    "body": req.body_str(),
                    "request_id": req.request_id,
                    "timeout_ms": req.timeout_ms,
                }))
                .with_header("x-served", self.served.load(Ordering::Relaxed).to_string()))
            }
            _ => Ok(Response::not_found("nothing here")),
        }
    }

    async fn on_request(&self, req: &Request) -> PluginResult<Option<Response>> {
        Ok(req
            .header("authorization")
            .is_none()
            .then(|| Response::error(401, "missing credentials")))
    }

    async fn on_response(
        &self,
        _req: &Request,
        upstream: &Response,
    ) -> PluginResult<Option<Response>> {
        Ok(Some(upstream.clone().with_header("x-seen-by", "probe")))
    }

    async fn health_check(&self) -> PluginResult<PluginHealth> {
        Err(PluginError::processing("disk full"))
    }

    async fn shutdown(&self) -> PluginResult<()> {
        log_info!(
            "probe stopping after {} requests",
            self.served.load(Ordering::Relaxed)
        );
        Ok(())
    }
}

export_plugin!(Probe);

extern "C" {
    fn backworks_plugin_entry(host_abi_version: u32) -> *const bw_plugin;
}

// ---- a minimal host -------------------------------------------------------------

static LOGS: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn log_sink(ctx: *mut c_void, level: i32, message: *const c_char, len: usize) {
    assert_eq!(
        ctx as usize, 0xC0FFEE,
        "the host's ctx comes back unchanged"
    );
    let text =
        String::from_utf8_lossy(std::slice::from_raw_parts(message.cast::<u8>(), len)).into_owned();
    LOGS.lock().unwrap().push((level, text));
}

fn logged(needle: &str) -> Vec<(i32, String)> {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains(needle))
        .cloned()
        .collect()
}

fn descriptor() -> &'static bw_plugin {
    unsafe { &*backworks_plugin_entry(BW_ABI_VERSION) }
}

fn host() -> Box<bw_host> {
    Box::new(bw_host {
        abi_version: BW_ABI_VERSION,
        struct_size: std::mem::size_of::<bw_host>() as u32,
        ctx: 0xC0FFEE as *mut c_void,
        log: Some(log_sink),
    })
}

fn new_response() -> bw_response {
    let mut r: bw_response = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<bw_response>() as u32;
    r
}

/// What the host copies out of a response, after which it releases it once.
#[derive(Debug)]
struct Answer {
    status: i32,
    content_type: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn text(s: &bw_str) -> String {
    if s.len == 0 {
        return String::new();
    }
    String::from_utf8(unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) }.to_vec())
        .unwrap()
}

fn take(resp: &mut bw_response) -> Answer {
    let headers = (0..resp.headers_len)
        .map(|i| {
            let h = unsafe { &*resp.headers.add(i) };
            (text(&h.name), text(&h.value))
        })
        .collect();
    let body = if resp.body_len == 0 {
        String::new()
    } else {
        String::from_utf8(unsafe { std::slice::from_raw_parts(resp.body, resp.body_len) }.to_vec())
            .unwrap()
    };
    let answer = Answer {
        status: resp.status,
        content_type: text(&resp.content_type),
        headers,
        body,
    };
    if let Some(release) = resp.release.take() {
        unsafe { release(resp.release_data) };
    }
    answer
}

fn bs(s: &str) -> bw_str {
    bw_str {
        ptr: s.as_ptr().cast(),
        len: s.len(),
    }
}

struct Instance {
    state: *mut c_void,
    _host: Box<bw_host>,
}

fn instantiate(config: &str) -> Result<Instance, String> {
    let d = descriptor();
    let host = host();
    let mut state = ptr::null_mut();
    let mut error = new_response();
    let config_c = format!("{config}\0");
    let rc = unsafe {
        (d.init.unwrap())(
            &*host,
            config_c.as_ptr().cast(),
            config.len(),
            &mut state,
            &mut error,
        )
    };
    let answer = take(&mut error);
    if rc == BW_OK {
        Ok(Instance { state, _host: host })
    } else {
        assert_eq!(rc, BW_FAIL);
        Err(answer.body)
    }
}

struct Req<'a> {
    path: &'a str,
    query: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    cancelled: u32,
}

impl<'a> Req<'a> {
    fn get(path: &'a str) -> Req<'a> {
        Req {
            path,
            query: "",
            headers: Vec::new(),
            cancelled: 0,
        }
    }
}

/// Builds the host-owned `bw_request` for `req` and runs `f` with it.
fn with_request<R>(req: &Req<'_>, f: impl FnOnce(&bw_request) -> R) -> R {
    let params = [bw_header {
        name: bs("city"),
        value: bs("oslo"),
    }];
    let headers: Vec<bw_header> = req
        .headers
        .iter()
        .map(|(k, v)| bw_header {
            name: bs(k),
            value: bs(v),
        })
        .collect();
    let body = b"payload";
    let cancelled = req.cancelled;
    let raw = bw_request {
        struct_size: std::mem::size_of::<bw_request>() as u32,
        method: bs("GET"),
        path: bs(req.path),
        query: bs(req.query),
        endpoint: bs("/things/{city}"),
        params: params.as_ptr(),
        params_len: params.len(),
        headers: if headers.is_empty() {
            ptr::null()
        } else {
            headers.as_ptr()
        },
        headers_len: headers.len(),
        body: body.as_ptr(),
        body_len: body.len(),
        request_id: bs("req-1"),
        timeout_ms: 250,
        cancelled: &cancelled,
    };
    f(&raw)
}

impl Instance {
    fn handle(&self, req: &Req<'_>) -> (i32, Answer) {
        with_request(req, |raw| {
            let mut resp = new_response();
            let rc = unsafe { (descriptor().handle.unwrap())(self.state, raw, &mut resp) };
            (rc, take(&mut resp))
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        unsafe { (descriptor().shutdown.unwrap())(self.state) };
    }
}

const CONFIG: &str = r#"{"api_key": "secret"}"#;

// ---- the tests --------------------------------------------------------------------

#[test]
fn descriptor_reports_what_the_trait_says() {
    let d = descriptor();
    assert_eq!(d.abi_version, BW_ABI_VERSION);
    assert_eq!(d.struct_size as usize, std::mem::size_of::<bw_plugin>());
    let s = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned();
    assert_eq!(s(d.name), "probe");
    assert_eq!(s(d.version), "0.1.0");
    assert_eq!(
        s(d.description),
        "exercises the boundary",
        "the description is one line"
    );
    assert_eq!(d.flags, BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING);
    assert!(
        d.health.is_some()
            && d.shutdown.is_some()
            && d.on_request.is_some()
            && d.on_response.is_some()
    );
    assert!(ptr::eq(d, descriptor()), "one static descriptor");
}

#[test]
fn entry_declines_another_major_and_accepts_a_later_minor() {
    assert!(unsafe { backworks_plugin_entry(2 << 16) }.is_null());
    assert!(unsafe { backworks_plugin_entry(0) }.is_null());
    assert!(!unsafe { backworks_plugin_entry((1 << 16) | 9) }.is_null());
}

#[test]
fn init_failure_carries_the_plugins_reason() {
    let error = instantiate("{}").err().unwrap();
    assert_eq!(error, "invalid configuration: api_key is required");
    let error = instantiate("{not json").err().unwrap();
    assert!(error.starts_with("config is not valid JSON: "), "{error}");
}

#[test]
fn panic_in_initialize_is_bw_fail_with_the_message() {
    let error = instantiate(r#"{"panic": true}"#).err().unwrap();
    assert_eq!(error, "initialize panicked: init exploded");
}

#[test]
fn panic_in_handle_is_bw_fail_with_the_message_and_the_instance_survives() {
    let instance = instantiate(CONFIG).unwrap();
    let (rc, answer) = instance.handle(&Req::get("/panic"));
    assert_eq!(rc, BW_FAIL);
    assert_eq!(answer.body, "handle panicked: boom in handle");
    assert_eq!(answer.content_type, "text/plain; charset=utf-8");
    let (rc, answer) = instance.handle(&Req::get("/panic-formatted"));
    assert_eq!(
        (rc, answer.body.as_str()),
        (BW_FAIL, "handle panicked: formatted 42")
    );
    let (rc, answer) = instance.handle(&Req::get("/echo"));
    assert_eq!((rc, answer.status), (BW_OK, 200));
}

#[test]
fn errors_are_bw_fail_and_deliberate_4xx_are_bw_ok() {
    let instance = instantiate(CONFIG).unwrap();
    let (rc, answer) = instance.handle(&Req::get("/fail"));
    assert_eq!(
        (rc, answer.body.as_str()),
        (BW_FAIL, "processing failed: database unreachable")
    );
    let (rc, answer) = instance.handle(&Req::get("/nowhere"));
    assert_eq!(
        (rc, answer.status, answer.body.as_str()),
        (BW_OK, 404, r#"{"error":"nothing here"}"#)
    );
    assert_eq!(answer.content_type, "", "empty means application/json");
}

#[test]
fn request_fields_reach_the_handler() {
    let instance = instantiate(CONFIG).unwrap();
    let req = Req {
        path: "/echo",
        query: "q=a%20b&x=1",
        headers: vec![("x-test", "yes")],
        cancelled: 0,
    };
    let (rc, answer) = instance.handle(&req);
    assert_eq!(rc, BW_OK);
    let body: Value = answer.body.parse().unwrap();
    assert_eq!(
        body,
        json!({"method": "GET", "endpoint": "/things/{city}", "city": "oslo", "q": "a b", "header": "yes",
               "body": "payload", "request_id": "req-1", "timeout_ms": 250})
    );
    assert!(answer.headers.iter().any(|(k, _)| k == "x-served"));
}

#[test]
fn cancellation_is_visible_and_becomes_bw_cancelled() {
    let instance = instantiate(CONFIG).unwrap();
    let (rc, _) = instance.handle(&Req {
        cancelled: 1,
        ..Req::get("/cancel")
    });
    assert_eq!(rc, BW_CANCELLED);
    let (rc, answer) = instance.handle(&Req::get("/cancel"));
    assert_eq!((rc, answer.body.as_str()), (BW_OK, "not cancelled"));
}

#[test]
fn hooks_answer_or_pass_through() {
    let instance = instantiate(CONFIG).unwrap();
    let d = descriptor();
    with_request(&Req::get("/echo"), |raw| {
        let mut resp = new_response();
        assert_eq!(
            unsafe { (d.on_request.unwrap())(instance.state, raw, &mut resp) },
            BW_OK
        );
        let answer = take(&mut resp);
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, r#"{"error":"missing credentials"}"#)
        );
    });
    with_request(
        &Req {
            headers: vec![("authorization", "Bearer x")],
            ..Req::get("/echo")
        },
        |raw| {
            let mut resp = new_response();
            assert_eq!(
                unsafe { (d.on_request.unwrap())(instance.state, raw, &mut resp) },
                BW_OK
            );
            assert_eq!(resp.status, 0, "status 0 lets the request go on");
            assert!(resp.release.is_none());
        },
    );
    with_request(&Req::get("/echo"), |raw| {
        let mut upstream = new_response();
        upstream.status = 201;
        upstream.body = b"{}".as_ptr();
        upstream.body_len = 2;
        let mut out = new_response();
        assert_eq!(
            unsafe { (d.on_response.unwrap())(instance.state, raw, &upstream, &mut out) },
            BW_OK
        );
        let answer = take(&mut out);
        assert_eq!((answer.status, answer.body.as_str()), (201, "{}"));
        assert_eq!(
            answer.headers,
            vec![("x-seen-by".to_owned(), "probe".to_owned())]
        );
    });
}

#[test]
fn a_failing_health_check_reports_unhealthy() {
    let instance = instantiate(CONFIG).unwrap();
    let mut report = new_response();
    assert_eq!(
        unsafe { (descriptor().health.unwrap())(instance.state, &mut report) },
        BW_OK
    );
    let answer = take(&mut report);
    assert_eq!(answer.status, 503);
    let body: Value = answer.body.parse().unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["message"], "processing failed: disk full");
}

#[test]
fn logs_reach_the_host_from_every_call_and_from_shutdown() {
    let instance = instantiate(CONFIG).unwrap();
    assert!(logged("probe ready with key 6")
        .iter()
        .any(|(level, _)| *level == BW_LOG_INFO));
    instance.handle(&Req::get("/echo"));
    assert!(logged("echo req-1")
        .iter()
        .any(|(level, _)| *level == BW_LOG_DEBUG));
    drop(instance);
    assert!(!logged("probe stopping after").is_empty());
}

#[test]
fn concurrent_calls_on_one_instance() {
    let instance = instantiate(CONFIG).unwrap();
    let state = instance.state as usize;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let fake = std::mem::ManuallyDrop::new(Instance {
                    state: state as *mut c_void,
                    _host: host(),
                });
                for _ in 0..50 {
                    let (rc, answer) = fake.handle(&Req::get("/echo"));
                    assert_eq!((rc, answer.status), (BW_OK, 200));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
