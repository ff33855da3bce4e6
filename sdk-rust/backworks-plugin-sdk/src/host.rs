//! Logging through the host (`bw_host.log`), from any thread.
//!
//! Each plugin instance gets its own `bw_host` at `init`. The SDK wraps it in a
//! [`Host`] and makes it the *current* host of the thread for the duration of
//! every call into that instance, so [`log_info!`](crate::log_info) and friends
//! land in the right instance's log. A thread the plugin spawned itself has no
//! current host; it logs through the most recently initialised live instance, or
//! through a [`Host`] it cloned from [`host()`] (the clean way for workers).
//!
//! The `bw_host` is valid only until the instance's `shutdown` returns. A
//! [`Host`] can outlive that (a clone held by a worker thread), so every `log` call
//! holds a read lock on the host's `connected` flag, and `shutdown` takes the write
//! lock to clear it before returning: after that, messages are dropped instead of
//! reaching freed host memory.

use std::cell::RefCell;
use std::ffi::c_void;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::abi::{bw_host, bw_log_fn, BW_LOG_DEBUG, BW_LOG_ERROR, BW_LOG_INFO, BW_LOG_WARN};

/// The level of a log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `BW_LOG_DEBUG`: detail for debugging.
    Debug,
    /// `BW_LOG_INFO`: normal operation.
    Info,
    /// `BW_LOG_WARN`: something unexpected that was handled.
    Warn,
    /// `BW_LOG_ERROR`: something failed.
    Error,
}

impl LogLevel {
    /// The ABI's number for this level.
    pub const fn as_i32(self) -> i32 {
        match self {
            LogLevel::Debug => BW_LOG_DEBUG,
            LogLevel::Info => BW_LOG_INFO,
            LogLevel::Warn => BW_LOG_WARN,
            LogLevel::Error => BW_LOG_ERROR,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

struct Inner {
    ctx: *mut c_void,
    log: Option<bw_log_fn>,
    abi_version: u32,
    /// False once the instance's `shutdown` has begun to return.
    connected: RwLock<bool>,
}

// SAFETY: `ctx` is opaque and only handed back to the host's `log`, which the ABI
// declares thread-safe; `connected` guards its lifetime (see the module docs).
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

/// The host services of one plugin instance: cheap to clone, usable from any
/// thread, harmless after the instance shut down (messages are then dropped).
///
/// Outside a host (a plugin's own unit tests), [`host()`] returns a detached
/// `Host` that writes to stderr.
#[derive(Clone)]
pub struct Host {
    inner: Option<Arc<Inner>>,
}

impl Host {
    /// A host that writes log lines to stderr: what [`host()`] gives outside a
    /// Backworks process.
    pub fn detached() -> Host {
        Host { inner: None }
    }

    /// Wraps the `bw_host` handed to `init`.
    ///
    /// # Safety
    /// `raw` must be NULL or valid until [`disconnect`](Host::disconnect) is called.
    pub(crate) unsafe fn from_raw(raw: *const bw_host) -> Host {
        let Some(raw) = raw.as_ref() else {
            return Host {
                inner: Some(Arc::new(Inner {
                    ctx: std::ptr::null_mut(),
                    log: None,
                    abi_version: 0,
                    connected: RwLock::new(false),
                })),
            };
        };
        // A host of ABI 1.x has every 1.0 field; a shorter struct would be a broken host.
        let has_log = raw.struct_size as usize >= std::mem::size_of::<bw_host>();
        Host {
            inner: Some(Arc::new(Inner {
                ctx: raw.ctx,
                log: if has_log { raw.log } else { None },
                abi_version: raw.abi_version,
                connected: RwLock::new(true),
            })),
        }
    }

    /// Stops all further logging through this host (and its clones); waits for
    /// log calls in flight on other threads.
    pub(crate) fn disconnect(&self) {
        if let Some(inner) = &self.inner {
            *inner
                .connected
                .write()
                .unwrap_or_else(PoisonError::into_inner) = false;
        }
    }

    fn same(&self, other: &Host) -> bool {
        match (&self.inner, &other.inner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// True while the instance this host belongs to is alive (false when detached).
    pub fn is_connected(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| *i.connected.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// `BW_ABI_VERSION` of the host, or `None` when detached.
    pub fn abi_version(&self) -> Option<u32> {
        self.inner.as_ref().map(|i| i.abi_version)
    }

    /// Sends `message` to the host's structured log at `level`.
    pub fn log(&self, level: LogLevel, message: &str) {
        let Some(inner) = &self.inner else {
            eprintln!("[backworks plugin] {level}: {message}");
            return;
        };
        let connected = inner
            .connected
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let (true, Some(log)) = (*connected, inner.log) {
            // SAFETY: the host keeps `ctx` and `log` valid until shutdown returns,
            // and shutdown cannot return while this read guard is held.
            unsafe {
                log(
                    inner.ctx,
                    level.as_i32(),
                    message.as_ptr().cast(),
                    message.len(),
                )
            };
        }
    }

    /// Sends the text of `args` at `level`, formatted into a buffer the thread
    /// reuses: what the `log_*!` macros call, so a log line costs no allocation.
    pub fn log_args(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        if let Some(text) = args.as_str() {
            return self.log(level, text);
        }
        let reused = LINE.try_with(|line| {
            // Busy when formatting an argument logs in turn: then allocate.
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            let _ = fmt::write(&mut *line, args);
            self.log(level, &line);
            if line.capacity() > 16 * 1024 {
                *line = String::new(); // one huge line does not pin its buffer
            }
            true
        });
        if reused != Ok(true) {
            self.log(level, &args.to_string());
        }
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Logs at error level.
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("detached", &self.inner.is_none())
            .field("connected", &self.is_connected())
            .finish()
    }
}

thread_local! {
    /// The buffer `Host::log_args` formats into.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The host of the instance this thread is currently running a call for.
    static CURRENT: RefCell<Option<Host>> = const { RefCell::new(None) };
}

/// Live instances' hosts, oldest first: the fallback for threads with no call.
static LIVE: Mutex<Vec<Host>> = Mutex::new(Vec::new());

/// The host to log through from here: the current call's instance, else the most
/// recently initialised live instance, else a detached host (stderr).
///
/// Clone it into worker threads you spawn so their messages go to the instance
/// that started them: `let host = host(); std::thread::spawn(move || host.info("tick"));`
pub fn host() -> Host {
    let current = CURRENT.try_with(|c| c.borrow().clone()).ok().flatten();
    current
        .or_else(|| {
            LIVE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last()
                .cloned()
        })
        .unwrap_or_else(Host::detached)
}

/// Makes `host` the thread's current host until dropped, then restores the previous one.
pub(crate) struct Scope {
    previous: Option<Host>,
}

impl Scope {
    pub(crate) fn enter(host: &Host) -> Scope {
        let previous = CURRENT
            .try_with(|c| c.replace(Some(host.clone())))
            .ok()
            .flatten();
        Scope { previous }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|c| c.replace(previous));
    }
}

/// Records a newly initialised instance's host as live.
pub(crate) fn register(host: &Host) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(host.clone());
}

/// Forgets a host at shutdown and disconnects it.
pub(crate) fn unregister(host: &Host) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|h| !h.same(host));
    host.disconnect();
}

/// Logs through [`host()`] at debug level, with `format!` arguments.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => { $crate::host().log_args($crate::LogLevel::Debug, ::std::format_args!($($arg)+)) };
}

/// Logs through [`host()`] at info level, with `format!` arguments.
///
/// ```
/// use backworks_plugin_sdk::*;
/// let city = "oslo";
/// log_info!("serving {city}"); // outside a host this goes to stderr
/// ```
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => { $crate::host().log_args($crate::LogLevel::Info, ::std::format_args!($($arg)+)) };
}

/// Logs through [`host()`] at warn level, with `format!` arguments.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => { $crate::host().log_args($crate::LogLevel::Warn, ::std::format_args!($($arg)+)) };
}

/// Logs through [`host()`] at error level, with `format!` arguments.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => { $crate::host().log_args($crate::LogLevel::Error, ::std::format_args!($($arg)+)) };
}
