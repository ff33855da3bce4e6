//! What `export_plugin!` expands to: the descriptor and the boundary functions.
//!
//! Public only so the macro can name it from the plugin's crate; not an API.
//!
//! Every boundary function follows the same steps: check the pointers, run the
//! plugin inside `catch_unwind` (a panic must never unwind into the host, ABI rule
//! 6), make the instance's host current for logging, drive the future with
//! `block_on`, and turn the outcome into a return code plus a response the host
//! releases exactly once.

use std::any::Any;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;

use crate::abi::{
    bw_host, bw_plugin, bw_request, bw_response, BW_ABI_VERSION, BW_ABI_VERSION_MAJOR,
    BW_CANCELLED, BW_FAIL, BW_OK,
};
use crate::error::{PluginError, PluginResult};
use crate::executor::block_on;
use crate::host::{self, Host, LogLevel, Scope};
use crate::http::{bytes, write_failure, Request, Response};
use crate::json::{self, Map, Value};
use crate::plugin::{is_valid_plugin_name, BackworksPlugin, Hooks, PluginFlags, PluginHealth};
use crate::view::RequestView;

/// How `export_plugin!` tells the SDK which type to serve and how to make one.
pub trait PluginFactory: 'static {
    /// The plugin type.
    type Plugin: BackworksPlugin + 'static;
    /// The exporting crate's `CARGO_PKG_NAME`, for a fallback descriptor name.
    const CRATE_NAME: &'static str;
    /// The exporting crate's `CARGO_PKG_VERSION`.
    const CRATE_VERSION: &'static str;
    /// A fresh plugin value.
    fn create() -> Self::Plugin;
    /// The crate's one descriptor cell.
    fn descriptor() -> &'static OnceLock<Descriptor>;
}

/// A `bw_plugin` with the strings it points to.
pub struct Descriptor {
    raw: bw_plugin,
    _strings: [CString; 3],
    /// Why instances must be refused (an invalid name, a panic while describing
    /// the plugin); `init` fails with this message.
    defect: Option<String>,
}

// SAFETY: the descriptor is immutable once built, and its pointers point into the
// `CString`s it owns or at functions.
unsafe impl Send for Descriptor {}
// SAFETY: as above.
unsafe impl Sync for Descriptor {}

/// A C string of `s` without interior NULs (which C strings cannot hold).
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("NULs removed")
}

/// The crate name forced into the plugin-name alphabet: the fallback name.
fn fallback_name(crate_name: &str) -> String {
    let mut name: String = crate_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.replace_range(..name.chars().next().map_or(0, char::len_utf8), "x");
    }
    name
}

impl Descriptor {
    fn build<F: PluginFactory>() -> Descriptor {
        let probe = catch_unwind(|| {
            let p = F::create();
            (
                p.name().to_owned(),
                p.version().to_owned(),
                p.description().to_owned(),
                p.flags(),
                p.hooks(),
            )
        });
        let ((name, version, description, flags, hooks), defect) = match probe {
            Ok(described) => {
                let defect = (!is_valid_plugin_name(&described.0)).then(|| {
                    format!(
                        "plugin name {:?} is invalid: expected [a-z0-9][a-z0-9_-]{{0,63}}",
                        described.0
                    )
                });
                (described, defect)
            }
            Err(payload) => {
                let defect = format!(
                    "describing the plugin panicked: {}",
                    panic_message(&*payload)
                );
                let fallback = (
                    fallback_name(F::CRATE_NAME),
                    F::CRATE_VERSION.to_owned(),
                    String::new(),
                    PluginFlags::NONE,
                    Hooks::NONE,
                );
                (fallback, Some(defect))
            }
        };
        // The description is one line.
        let description = description.replace(['\r', '\n'], " ");
        let strings = [c_string(&name), c_string(&version), c_string(&description)];
        let raw = bw_plugin {
            abi_version: BW_ABI_VERSION,
            struct_size: std::mem::size_of::<bw_plugin>() as u32,
            name: strings[0].as_ptr(),
            version: strings[1].as_ptr(),
            description: strings[2].as_ptr(),
            flags: flags.bits(),
            init: Some(init::<F>),
            handle: Some(handle::<F>),
            health: Some(health::<F>),
            shutdown: Some(shutdown::<F>),
            on_request: if hooks.on_request {
                Some(on_request::<F>)
            } else {
                None
            },
            on_response: if hooks.on_response {
                Some(on_response::<F>)
            } else {
                None
            },
        };
        Descriptor {
            raw,
            _strings: strings,
            defect,
        }
    }
}

fn descriptor<F: PluginFactory>() -> &'static Descriptor {
    F::descriptor().get_or_init(Descriptor::build::<F>)
}

/// The body of the exported `backworks_plugin_entry`: the descriptor for a host
/// of the same major version, NULL for any other. Builds the descriptor once, on
/// the first call; nothing else happens.
pub fn entry<F: PluginFactory>(host_abi_version: u32) -> *const bw_plugin {
    if host_abi_version >> 16 != BW_ABI_VERSION_MAJOR {
        return ptr::null();
    }
    // `build` catches the plugin's panics itself; this is for the SDK's own.
    catch_unwind(|| ptr::from_ref(&descriptor::<F>().raw)).unwrap_or(ptr::null())
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// One initialised plugin value and its host: what the `state` pointer points to.
struct Instance<P> {
    plugin: P,
    host: Host,
}

/// Runs `call` against the instance behind `state`, with its host current,
/// catching panics.
///
/// # Safety
/// `state` must come from this crate's `init::<F>` and not be shut down.
unsafe fn with_instance<F: PluginFactory, R>(
    state: *mut c_void,
    call: impl FnOnce(&F::Plugin) -> R,
) -> std::thread::Result<R> {
    let instance = &*state.cast::<Instance<F::Plugin>>();
    catch_unwind(AssertUnwindSafe(|| {
        let _scope = Scope::enter(&instance.host);
        call(&instance.plugin)
    }))
}

/// Turns the outcome of a call that answers a response into a return code.
unsafe fn answer(
    out: *mut bw_response,
    outcome: std::thread::Result<PluginResult<Option<Response>>>,
    call: &str,
) -> i32 {
    match outcome {
        Ok(Ok(Some(response))) => {
            response.write_to(out);
            BW_OK
        }
        Ok(Ok(None)) => BW_OK,
        Ok(Err(PluginError::Cancelled)) => BW_CANCELLED,
        Ok(Err(e)) => {
            write_failure(out, &e.to_string());
            BW_FAIL
        }
        Err(payload) => {
            write_failure(
                out,
                &format!("{call} panicked: {}", panic_message(&*payload)),
            );
            BW_FAIL
        }
    }
}

/// The config text as JSON; empty (or all whitespace) is `{}`.
fn parse_config(config: &[u8]) -> Result<Value, String> {
    if config.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    json::from_slice(config).map_err(|e| format!("config is not valid JSON: {e}"))
}

unsafe extern "C" fn init<F: PluginFactory>(
    host: *const bw_host,
    config_json: *const c_char,
    config_len: usize,
    state: *mut *mut c_void,
    error: *mut bw_response,
) -> i32 {
    if state.is_null() {
        write_failure(error, "init called with a NULL state pointer");
        return BW_FAIL;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<*mut c_void, String> {
        if let Some(defect) = &descriptor::<F>().defect {
            return Err(defect.clone());
        }
        let config = parse_config(bytes(config_json.cast(), config_len))?;
        let host = Host::from_raw(host);
        let plugin = F::create();
        {
            let _scope = Scope::enter(&host);
            block_on(plugin.initialize(&config)).map_err(|e| e.to_string())?;
        }
        host::register(&host);
        Ok(Box::into_raw(Box::new(Instance { plugin, host })).cast::<c_void>())
    }));
    match outcome {
        Ok(Ok(instance)) => {
            *state = instance;
            BW_OK
        }
        Ok(Err(message)) => {
            write_failure(error, &message);
            BW_FAIL
        }
        Err(payload) => {
            write_failure(
                error,
                &format!("initialize panicked: {}", panic_message(&*payload)),
            );
            BW_FAIL
        }
    }
}

unsafe extern "C" fn handle<F: PluginFactory>(
    state: *mut c_void,
    req: *const bw_request,
    resp: *mut bw_response,
) -> i32 {
    if state.is_null() || req.is_null() || resp.is_null() {
        write_failure(resp, "handle called with a NULL pointer");
        return BW_FAIL;
    }
    let outcome = with_instance::<F, _>(state, |plugin| {
        // Read in place; text that is not UTF-8 is copied with lossy decoding first.
        match RequestView::from_raw(&*req) {
            Some(view) => plugin.handle_view(&view),
            None => plugin.handle_view(&Request::from_raw(&*req).view()),
        }
        .map(Some)
    });
    answer(resp, outcome, "handle")
}

unsafe extern "C" fn health<F: PluginFactory>(state: *mut c_void, report: *mut bw_response) -> i32 {
    if state.is_null() || report.is_null() {
        write_failure(report, "health called with a NULL pointer");
        return BW_FAIL;
    }
    let outcome = with_instance::<F, _>(state, |plugin| {
        // An Err is a report too: unhealthy, with the reason.
        let health = block_on(plugin.health_check())
            .unwrap_or_else(|e| PluginHealth::unhealthy(e.to_string()));
        Ok(Some(health.to_response()))
    });
    answer(report, outcome, "health_check")
}

unsafe extern "C" fn on_request<F: PluginFactory>(
    state: *mut c_void,
    req: *const bw_request,
    resp: *mut bw_response,
) -> i32 {
    if state.is_null() || req.is_null() || resp.is_null() {
        write_failure(resp, "on_request called with a NULL pointer");
        return BW_FAIL;
    }
    let outcome = with_instance::<F, _>(state, |plugin| {
        let request = Request::from_raw(&*req);
        block_on(plugin.on_request(&request))
    });
    answer(resp, outcome, "on_request")
}

unsafe extern "C" fn on_response<F: PluginFactory>(
    state: *mut c_void,
    req: *const bw_request,
    upstream: *const bw_response,
    out: *mut bw_response,
) -> i32 {
    if state.is_null() || req.is_null() || upstream.is_null() || out.is_null() {
        write_failure(out, "on_response called with a NULL pointer");
        return BW_FAIL;
    }
    let outcome = with_instance::<F, _>(state, |plugin| {
        let request = Request::from_raw(&*req);
        let upstream = Response::from_raw(&*upstream);
        block_on(plugin.on_response(&request, &upstream))
    });
    answer(out, outcome, "on_response")
}

unsafe extern "C" fn shutdown<F: PluginFactory>(state: *mut c_void) {
    if state.is_null() {
        return;
    }
    let instance = Box::from_raw(state.cast::<Instance<F::Plugin>>());
    let host = instance.host.clone();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _scope = Scope::enter(&host);
        if let Err(e) = block_on(instance.plugin.shutdown()) {
            host.log(LogLevel::Error, &format!("shutdown failed: {e}"));
        }
        drop(instance);
    }));
    if let Err(payload) = outcome {
        host.log(
            LogLevel::Error,
            &format!("shutdown panicked: {}", panic_message(&*payload)),
        );
    }
    // After this the host's memory may be freed: no more logging through it.
    host::unregister(&host);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_names_are_legal_plugin_names() {
        assert_eq!(fallback_name("Weather_Plugin"), "weather_plugin");
        assert_eq!(fallback_name("_x y"), "xx-y");
        assert!(is_valid_plugin_name(&fallback_name(&"A".repeat(100))));
    }

    #[test]
    fn empty_config_is_an_empty_object() {
        assert_eq!(parse_config(b" \n").unwrap(), Value::Object(Map::new()));
        assert!(parse_config(b"{")
            .unwrap_err()
            .starts_with("config is not valid JSON"));
    }
}
