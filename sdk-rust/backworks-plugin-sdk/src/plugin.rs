//! The `BackworksPlugin` trait and what it reports about itself.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::abi::{BW_FLAG_NONBLOCKING, BW_FLAG_THREAD_SAFE};
use crate::error::PluginResult;
use crate::http::{Request, Response};
use crate::json::{Map, ToJson, Value};
use crate::view::RequestView;
use crate::{async_trait, json};

/// A Backworks plugin written in Rust.
///
/// Implement it with `#[async_trait]` and export the type with
/// [`export_plugin!`](crate::export_plugin):
///
/// ```
/// use backworks_plugin_sdk::*;
///
/// #[derive(Default)]
/// pub struct MyPlugin;
///
/// #[async_trait]
/// impl BackworksPlugin for MyPlugin {
///     fn name(&self) -> &str { "my-plugin" }
///     fn version(&self) -> &str { "1.0.0" }
///     fn description(&self) -> &str { "My awesome plugin" }
///
///     async fn process_endpoint_data(&self, endpoint: &str, method: &str, data: &str)
///         -> PluginResult<Option<String>> {
///         Ok(Some(json!({"endpoint": endpoint, "method": method, "echo": data}).to_string()))
///     }
/// }
///
/// export_plugin!(MyPlugin);
/// # let reply = block_on(MyPlugin.handle(&Request::new("GET", "/echo").with_body("hi"))).unwrap();
/// # assert_eq!(reply.body_json().unwrap()["echo"], "hi");
/// ```
///
/// Only `name` and `version` are required. A plugin serves requests either with
/// the seed-style [`process_endpoint_data`](BackworksPlugin::process_endpoint_data)
/// (strings in, an optional string out) or by overriding
/// [`handle`](BackworksPlugin::handle), which sees the whole [`Request`] (path
/// parameters, query, headers, the cancel flag) and answers a full [`Response`].
///
/// # Lifecycle
///
/// The host creates one value per configured instance (with `Default`, or the
/// constructor given to `export_plugin!`), calls
/// [`initialize`](BackworksPlugin::initialize) with the instance's JSON config, then
/// `handle` (and the hooks, and `health_check`) any number of times, and
/// [`shutdown`](BackworksPlugin::shutdown) once, after the last call returned. The
/// value is dropped after `shutdown`. Methods take `&self`: keep mutable state in
/// `Mutex`, `OnceLock` or atomics.
///
/// # Threading
///
/// The trait requires `Send + Sync`, so by default the descriptor says
/// [`PluginFlags::THREAD_SAFE`] and the host may run several `handle` calls on one
/// value at once. Override [`flags`](BackworksPlugin::flags) to drop that (the host
/// then serialises calls) or to add [`PluginFlags::NONBLOCKING`] when `handle`
/// never blocks and returns in microseconds, which lets the host call it on its
/// event-loop thread. `initialize`, `health_check` and `shutdown` never run
/// concurrently with `handle`.
///
/// # Async
///
/// The async methods are driven to completion on the calling thread by
/// [`block_on`](crate::block_on); there is no reactor, so do blocking std I/O inside
/// them rather than awaiting a tokio socket. A panic anywhere in these methods is
/// caught at the boundary and reported to the host as a failed call with the panic
/// message.
#[async_trait]
pub trait BackworksPlugin: Send + Sync {
    /// The plugin's name, `[a-z0-9][a-z0-9_-]{0,63}`: what endpoints refer to.
    fn name(&self) -> &str;

    /// The plugin's semantic version, e.g. `"1.2.0"`.
    fn version(&self) -> &str;

    /// One line saying what the plugin does.
    fn description(&self) -> &str {
        ""
    }

    /// What the host may assume about `handle`. Default: [`PluginFlags::THREAD_SAFE`].
    fn flags(&self) -> PluginFlags {
        PluginFlags::THREAD_SAFE
    }

    /// Which hooks the host should call. Default: none, so the host does not pay
    /// for two extra calls per request. Return e.g. [`Hooks::ON_REQUEST`] when
    /// [`on_request`](BackworksPlugin::on_request) is overridden.
    fn hooks(&self) -> Hooks {
        Hooks::NONE
    }

    /// Prepares the instance from its config (the `config:` mapping of the
    /// plugin in the host's YAML, as JSON; `{}` when there is none). An error
    /// refuses the instance and its message reaches the host's log and startup error.
    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        let _ = config;
        Ok(())
    }

    /// Releases what `initialize` acquired. Errors are logged by the SDK.
    async fn shutdown(&self) -> PluginResult<()> {
        Ok(())
    }

    /// Reports the instance's health. An `Err` is reported as unhealthy (503)
    /// with its message.
    async fn health_check(&self) -> PluginResult<PluginHealth> {
        Ok(PluginHealth::healthy("plugin is running normally"))
    }

    /// The seed-style handler: the matched endpoint (or the path when the host
    /// gave none), the method and the body as text. `Some(text)` answers 200 with
    /// it (as JSON when it parses as JSON, as plain text otherwise); `None` answers
    /// 404 with a JSON error. Used by the default [`handle`](BackworksPlugin::handle).
    async fn process_endpoint_data(
        &self,
        endpoint: &str,
        method: &str,
        data: &str,
    ) -> PluginResult<Option<String>> {
        let _ = (endpoint, method, data);
        Ok(None)
    }

    /// Serves one request. The default calls
    /// [`process_endpoint_data`](BackworksPlugin::process_endpoint_data) with
    /// `req.endpoint` (or `req.path`), `req.method` and the body.
    ///
    /// `Ok` is any answer, including a deliberate 4xx/5xx (`Response::error`);
    /// `Err` is a failure of the plugin, which the host counts against its circuit
    /// breaker; `Err(PluginError::Cancelled)` tells the host the call stopped
    /// because [`Request::is_cancelled`] became true.
    async fn handle(&self, req: &Request) -> PluginResult<Response> {
        let endpoint = if req.endpoint.is_empty() {
            &req.path
        } else {
            &req.endpoint
        };
        let data = String::from_utf8_lossy(&req.body);
        match self
            .process_endpoint_data(endpoint, &req.method, &data)
            .await?
        {
            Some(text) => Ok(if crate::json::from_str(&text).is_ok() {
                Response::json_text(200, text)
            } else {
                Response::text(200, text)
            }),
            None => Ok(Response::error(
                404,
                format!(
                    "{} does not handle {} {}",
                    self.name(),
                    req.method,
                    endpoint
                ),
            )),
        }
    }

    /// Serves one request read in place: the method the SDK calls for every
    /// request. The default copies the request into a [`Request`] and calls
    /// [`handle`](BackworksPlugin::handle), so a plugin that only writes `handle`
    /// works as before.
    ///
    /// Override it when the cost per request matters: a [`RequestView`] borrows the
    /// host's memory instead of copying a dozen fields, and the method is not
    /// `async`, so no future is boxed. Keep `handle` answering the same, by having
    /// it call this one: `self.handle_view(&req.view())`. Being synchronous, it
    /// suits handlers that compute their answer (what `PluginFlags::NONBLOCKING`
    /// promises); one that awaits keeps to `handle`.
    ///
    /// ```
    /// use backworks_plugin_sdk::*;
    ///
    /// #[derive(Default)]
    /// pub struct Echo;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for Echo {
    ///     fn name(&self) -> &str { "echo" }
    ///     fn version(&self) -> &str { "1.0.0" }
    ///
    ///     fn handle_view(&self, req: &RequestView<'_>) -> PluginResult<Response> {
    ///         let name = req.query_param("name");
    ///         Ok(Response::json_with(200, 64, |w| w.object(|o| {
    ///             o.field("hello", name.as_deref().unwrap_or("world"));
    ///         })))
    ///     }
    ///
    ///     async fn handle(&self, req: &Request) -> PluginResult<Response> {
    ///         self.handle_view(&req.view())
    ///     }
    /// }
    /// # let resp = block_on(Echo.handle(&Request::new("GET", "/").with_query("name=Ada"))).unwrap();
    /// # assert_eq!(resp.body_str(), Some(r#"{"hello":"Ada"}"#));
    /// ```
    fn handle_view(&self, req: &RequestView<'_>) -> PluginResult<Response> {
        crate::block_on(self.handle(&req.to_request()))
    }

    /// Runs before an endpoint's handler (when [`hooks`](BackworksPlugin::hooks)
    /// asks for it). `None` lets the request go on; `Some` answers at once (an
    /// auth plugin's 401). Default: `None`.
    async fn on_request(&self, req: &Request) -> PluginResult<Option<Response>> {
        let _ = req;
        Ok(None)
    }

    /// Runs after the handler (when [`hooks`](BackworksPlugin::hooks) asks for it).
    /// `None` keeps `upstream`; `Some` replaces it. Default: `None`.
    async fn on_response(
        &self,
        req: &Request,
        upstream: &Response,
    ) -> PluginResult<Option<Response>> {
        let _ = (req, upstream);
        Ok(None)
    }
}

/// The descriptor's `flags`: what the host may assume about `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PluginFlags(u64);

impl PluginFlags {
    /// No promises: the host serialises calls and runs them off its event loop.
    pub const NONE: PluginFlags = PluginFlags(0);
    /// `handle` may run concurrently on one instance (`BW_FLAG_THREAD_SAFE`).
    pub const THREAD_SAFE: PluginFlags = PluginFlags(BW_FLAG_THREAD_SAFE);
    /// `handle` never blocks and returns in microseconds (`BW_FLAG_NONBLOCKING`).
    pub const NONBLOCKING: PluginFlags = PluginFlags(BW_FLAG_NONBLOCKING);

    /// The bits as the descriptor carries them.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: PluginFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    pub const fn union(self, other: PluginFlags) -> PluginFlags {
        PluginFlags(self.0 | other.0)
    }
}

impl BitOr for PluginFlags {
    type Output = PluginFlags;
    fn bitor(self, other: PluginFlags) -> PluginFlags {
        self.union(other)
    }
}

impl BitOrAssign for PluginFlags {
    fn bitor_assign(&mut self, other: PluginFlags) {
        *self = self.union(other);
    }
}

/// Which optional hooks the descriptor offers the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hooks {
    /// Offer `on_request`.
    pub on_request: bool,
    /// Offer `on_response`.
    pub on_response: bool,
}

impl Hooks {
    /// No hooks.
    pub const NONE: Hooks = Hooks {
        on_request: false,
        on_response: false,
    };
    /// Only `on_request`.
    pub const ON_REQUEST: Hooks = Hooks {
        on_request: true,
        on_response: false,
    };
    /// Only `on_response`.
    pub const ON_RESPONSE: Hooks = Hooks {
        on_request: false,
        on_response: true,
    };
    /// Both hooks.
    pub const ALL: Hooks = Hooks {
        on_request: true,
        on_response: true,
    };
}

/// How a plugin instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Working normally (reported as HTTP 200).
    Healthy,
    /// Working with reduced service (HTTP 429).
    Degraded,
    /// Not working (HTTP 503).
    Unhealthy,
}

impl HealthStatus {
    /// The status code the ABI uses for this state.
    pub const fn http_status(self) -> u16 {
        match self {
            HealthStatus::Healthy => 200,
            HealthStatus::Degraded => 429,
            HealthStatus::Unhealthy => 503,
        }
    }

    /// `"healthy"`, `"degraded"` or `"unhealthy"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health report: status, a human message and JSON details.
///
/// ```
/// use backworks_plugin_sdk::*;
/// let report = PluginHealth::degraded("cache cold").with_detail("hit_rate", 0.12);
/// let resp = report.to_response();
/// assert_eq!(resp.status, 429);
/// assert_eq!(resp.body_json().unwrap()["details"]["hit_rate"], 0.12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PluginHealth {
    /// Healthy, degraded or unhealthy.
    pub status: HealthStatus,
    /// One line for people.
    pub message: String,
    /// Anything else worth reporting (counters, last error, ...).
    pub details: Map,
}

impl PluginHealth {
    /// A report with `status` and `message` and no details.
    pub fn new(status: HealthStatus, message: impl Into<String>) -> PluginHealth {
        PluginHealth {
            status,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// A healthy report.
    pub fn healthy(message: impl Into<String>) -> PluginHealth {
        PluginHealth::new(HealthStatus::Healthy, message)
    }

    /// A degraded report.
    pub fn degraded(message: impl Into<String>) -> PluginHealth {
        PluginHealth::new(HealthStatus::Degraded, message)
    }

    /// An unhealthy report.
    pub fn unhealthy(message: impl Into<String>) -> PluginHealth {
        PluginHealth::new(HealthStatus::Unhealthy, message)
    }

    /// With one more detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl ToJson) -> PluginHealth {
        self.details.insert(key, value.to_json());
        self
    }

    /// The report as the ABI's `health` answer: status 200/429/503 and
    /// `{"status": "...", "message": "...", "details": {...}}`.
    pub fn to_response(&self) -> Response {
        Response::json(
            self.status.http_status(),
            json!({"status": self.status.as_str(), "message": self.message, "details": self.details}),
        )
    }
}

/// True for a legal plugin name: `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// ```
/// use backworks_plugin_sdk::is_valid_plugin_name;
/// assert!(is_valid_plugin_name("my-plugin"));
/// assert!(!is_valid_plugin_name("My Plugin"));
/// ```
pub fn is_valid_plugin_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}
