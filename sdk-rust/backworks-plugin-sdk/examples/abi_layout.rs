//! Prints the `#[repr(C)]` mirror's layout, one fact per line, in the format a C
//! program compiled against `plugin.h` prints it: `sizeof bw_str 16`,
//! `offsetof bw_request cancelled 144`, `const BW_OK 0`. The Python test suite
//! compares the two outputs.

fn main() {
    print!("{}", backworks_plugin_sdk::abi::layout_report());
}
