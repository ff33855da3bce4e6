//! The `#[repr(C)]` mirror against the C header, as a C compiler lays it out.
//!
//! Generates a C program from the mirror's own list of structs, fields and
//! constants, compiles it against `sdk-c/include/backworks/plugin.h` with `$CC`
//! (default `cc`), and compares its output with `layout_report()` line by line. A
//! field the header lacks fails to compile; a field the mirror lacks changes a size;
//! a moved field changes an offset.

use std::path::PathBuf;
use std::process::Command;

use backworks_plugin_sdk::abi::{constants, layout_report, struct_layouts};

fn c_program() -> String {
    let mut body = String::new();
    for s in struct_layouts() {
        body += &format!("    printf(\"sizeof {0} %zu\\n\", sizeof({0}));\n", s.name);
        for (field, _) in &s.fields {
            body += &format!(
                "    printf(\"offsetof {0} {1} %zu\\n\", offsetof({0}, {1}));\n",
                s.name, field
            );
        }
    }
    for (name, _) in constants() {
        body += &format!(
            "    printf(\"const {0} %llu\\n\", (unsigned long long)({0}));\n",
            name
        );
    }
    format!("#include <stddef.h>\n#include <stdio.h>\n#include <backworks/plugin.h>\n\nint main(void) {{\n{body}    return 0;\n}}\n")
}

#[test]
fn mirror_matches_the_c_header() {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-c/include");
    assert!(
        include.join("backworks/plugin.h").is_file(),
        "plugin.h not found under {}",
        include.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("layout");
    std::fs::create_dir_all(&dir).unwrap();
    let (source, exe) = (dir.join("layout.c"), dir.join("layout"));
    std::fs::write(&source, c_program()).unwrap();

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(format!("-I{}", include.display()))
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(status.success(), "the C layout program did not compile against plugin.h: the mirror names a field the header lacks");

    let output = Command::new(&exe).output().unwrap();
    assert!(output.status.success());
    let mut c_lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    c_lines.sort();
    let rust_lines: Vec<String> = layout_report().lines().map(str::to_owned).collect();
    let only_c: Vec<&String> = c_lines.iter().filter(|l| !rust_lines.contains(l)).collect();
    let only_rust: Vec<&String> = rust_lines.iter().filter(|l| !c_lines.contains(l)).collect();
    assert!(
        only_c.is_empty() && only_rust.is_empty(),
        "layout drift:\n  C says:    {only_c:?}\n  Rust says: {only_rust:?}"
    );
}
