//! Write Backworks plugins in Rust.
//!
//! A plugin is a `cdylib` that exports `backworks_plugin_entry`, the one symbol of
//! the Backworks plugin ABI 1.0 (`design/ABI.md`, rendered in C by
//! `sdk-c/include/backworks/plugin.h`). This crate lets you write it as a Rust type
//! implementing [`BackworksPlugin`] and generates the C side with
//! [`export_plugin!`]:
//!
//! ```
//! use backworks_plugin_sdk::*;
//!
//! #[derive(Default)]
//! pub struct Hello;
//!
//! #[async_trait]
//! impl BackworksPlugin for Hello {
//!     fn name(&self) -> &str { "hello" }
//!     fn version(&self) -> &str { "1.0.0" }
//!     fn description(&self) -> &str { "Says hello to ?name=" }
//!
//!     async fn handle(&self, req: &Request) -> PluginResult<Response> {
//!         let name = req.query_param("name").unwrap_or_else(|| "world".into());
//!         log_debug!("greeting {name}");
//!         Ok(Response::ok(json!({"hello": name})))
//!     }
//! }
//!
//! export_plugin!(Hello);
//! # let resp = block_on(Hello.handle(&Request::new("GET", "/").with_query("name=Ada"))).unwrap();
//! # assert_eq!(resp.body_str(), Some(r#"{"hello":"Ada"}"#));
//! ```
//!
//! What is in the box, all reachable through `use backworks_plugin_sdk::*;`:
//!
//! - [`BackworksPlugin`], the trait (with [`PluginFlags`], [`Hooks`],
//!   [`PluginHealth`]), and [`#[async_trait]`](async_trait) for its `async fn`s;
//! - [`Request`] and [`Response`];
//! - [`PluginError`] and [`PluginResult`];
//! - [`Value`], [`Map`] and [`json!`], a small `serde_json`;
//! - logging through the host: [`log_info!`] and friends, or [`host()`];
//! - [`export_plugin!`], and the [`abi`] mirror of the C header underneath it.
//!
//! The crate uses the standard library only. Panics inside plugin code are caught
//! at the boundary and reported as failed calls, so keep the default
//! `panic = "unwind"` in your profiles (with `panic = "abort"` a panic ends the
//! host process).
#![warn(missing_docs)]

pub mod abi;
mod error;
mod executor;
#[doc(hidden)]
pub mod export;
mod host;
mod http;
pub mod json;
mod plugin;
mod view;

/// Rewrites `async fn`s in a trait or impl block into boxed-future methods; put
/// it on every `impl BackworksPlugin for ...` block.
///
/// The SDK's own trait definition carries the same attribute, so an impl and the
/// trait always agree on the signatures. See the `backworks-plugin-macros` crate
/// for exactly what the rewrite produces.
pub use backworks_plugin_macros::async_trait;

pub use error::{PluginError, PluginResult};
pub use executor::block_on;
pub use host::{host, Host, LogLevel};
pub use http::{Request, Response, TEXT_PLAIN};
pub use json::{Map, Number, ToJson, Value, WriteJson};
pub use plugin::{
    is_valid_plugin_name, BackworksPlugin, HealthStatus, Hooks, PluginFlags, PluginHealth,
};
pub use view::RequestView;

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Exports a [`BackworksPlugin`] type as a Backworks plugin library.
///
/// `export_plugin!(MyPlugin)` builds each instance with `MyPlugin::default()`;
/// `export_plugin!(MyPlugin, MyPlugin::new)` (or a closure) uses a constructor.
/// Use it once per `cdylib` crate. It defines `backworks_plugin_entry`, which:
///
/// - returns NULL to a host of another ABI major version (the host then reports
///   "plugin declined host ABI x.y");
/// - otherwise returns a descriptor with static storage duration, built once on the
///   first call from a throwaway instance's `name`, `version`, `description`,
///   `flags` and `hooks`: keep the constructor and those methods free of side
///   effects, because discovery calls the entry point just to look.
///
/// A name that is not a legal plugin name (`[a-z0-9][a-z0-9_-]{0,63}`) still goes
/// into the descriptor, where the host refuses it with a message naming it; `init`
/// refuses it too, for hosts that do not check. A constructor or method that panics
/// while the descriptor is built gives a descriptor named after the crate whose
/// `init` fails with the panic message.
///
/// The descriptor's functions catch every panic (`BW_FAIL`, the message in the
/// response body), drive the trait's futures with [`block_on`], allocate responses
/// in this library and free them in the `release` callback the host calls once.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, <$plugin as ::core::default::Default>::default);
    };
    ($plugin:ty, $constructor:expr) => {
        const _: () = {
            struct Factory;

            impl $crate::export::PluginFactory for Factory {
                type Plugin = $plugin;
                const CRATE_NAME: &'static str = ::core::env!("CARGO_PKG_NAME");
                const CRATE_VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");

                fn create() -> $plugin {
                    ($constructor)()
                }

                fn descriptor() -> &'static ::std::sync::OnceLock<$crate::export::Descriptor> {
                    static DESCRIPTOR: ::std::sync::OnceLock<$crate::export::Descriptor> =
                        ::std::sync::OnceLock::new();
                    &DESCRIPTOR
                }
            }

            /// The Backworks plugin ABI's one exported symbol.
            #[unsafe(no_mangle)]
            pub extern "C" fn backworks_plugin_entry(
                host_abi_version: u32,
            ) -> *const $crate::abi::bw_plugin {
                $crate::export::entry::<Factory>(host_abi_version)
            }
        };
    };
}
