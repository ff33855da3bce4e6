//! A plugin whose name is not a legal plugin name: the descriptor still carries the
//! name (so the host's refusal can quote it), and `init` refuses with the reason.

use std::ffi::{c_void, CStr};
use std::ptr;

use backworks_plugin_sdk::abi::*;
use backworks_plugin_sdk::*;

#[derive(Default)]
struct Shouting;

#[async_trait]
impl BackworksPlugin for Shouting {
    fn name(&self) -> &str {
        "My Plugin"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
}

export_plugin!(Shouting);

extern "C" {
    fn backworks_plugin_entry(host_abi_version: u32) -> *const bw_plugin;
}

#[test]
fn an_invalid_name_is_kept_in_the_descriptor_and_refused_by_init() {
    let d = unsafe { &*backworks_plugin_entry(BW_ABI_VERSION) };
    assert_eq!(
        unsafe { CStr::from_ptr(d.name) }.to_str().unwrap(),
        "My Plugin"
    );

    let mut state: *mut c_void = ptr::null_mut();
    let mut error: bw_response = unsafe { std::mem::zeroed() };
    let rc = unsafe { (d.init.unwrap())(ptr::null(), c"{}".as_ptr(), 2, &mut state, &mut error) };
    assert_eq!(rc, BW_FAIL);
    assert!(state.is_null());
    let message = unsafe { std::slice::from_raw_parts(error.body, error.body_len) };
    assert_eq!(
        std::str::from_utf8(message).unwrap(),
        r#"plugin name "My Plugin" is invalid: expected [a-z0-9][a-z0-9_-]{0,63}"#
    );
    unsafe { (error.release.unwrap())(error.release_data) };
}
