;; hello: the C hello plugin's twin as an Extism (wasm) plugin, for `make bench`.
;;
;;   input:  the name (bytes)             output: {"hello": "<name>"}
;;
;; The name is quoted as JSON, as sdk-c's bw_json_quote does: `"` and `\` get a
;; backslash, control characters become \u00XX. Written in WAT against the Extism
;; kernel ABI (the imports below are what the PDKs wrap), so the bench needs no wasm
;; toolchain: bench/wasm.py compiles it with wasmtime.wat2wasm.
;;
;; Linear memory: 0..16 hex digits, 16..27 the prefix `{"hello": "`, the input from
;; 32, the answer after it (room for every input byte growing to six).
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))

  (memory (export "memory") 1)
  (data (i32.const 0) "0123456789abcdef")
  (data (i32.const 16) "{\"hello\": \"")

  (func (export "hello") (result i32)
    (local $len i32) (local $i i32) (local $out i32) (local $o i32) (local $c i32)
    (local $need i32) (local $olen i32) (local $ptr i64)
    (local.set $len (i32.wrap_i64 (call $input_length)))
    ;; the answer starts after the input, 8-aligned
    (local.set $out
      (i32.and (i32.add (i32.add (i32.const 32) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (local.set $need
      (i32.add (local.get $out) (i32.add (i32.mul (local.get $len) (i32.const 6)) (i32.const 32))))
    (if (i32.gt_u (local.get $need) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $need) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then (return (i32.const 1))))))

    ;; the input into linear memory: 8 bytes at a time, then byte by byte
    (local.set $i (i32.const 0))
    (block $words_done
      (loop $words
        (br_if $words_done (i32.gt_u (i32.add (local.get $i) (i32.const 8)) (local.get $len)))
        (i64.store (i32.add (i32.const 32) (local.get $i))
                   (call $input_load_u64 (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $words)))
    (block $bytes_done
      (loop $bytes
        (br_if $bytes_done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (i32.const 32) (local.get $i))
                    (call $input_load_u8 (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $bytes)))

    ;; {"hello": "  then the quoted name, then  "}
    (memory.copy (local.get $out) (i32.const 16) (i32.const 11))
    (local.set $o (i32.add (local.get $out) (i32.const 11)))
    (local.set $i (i32.const 0))
    (block $quoted
      (loop $each
        (br_if $quoted (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (i32.const 32) (local.get $i))))
        (if (i32.or (i32.eq (local.get $c) (i32.const 34)) (i32.eq (local.get $c) (i32.const 92)))
          (then
            (i32.store8 (local.get $o) (i32.const 92))
            (i32.store8 offset=1 (local.get $o) (local.get $c))
            (local.set $o (i32.add (local.get $o) (i32.const 2))))
          (else
            (if (i32.lt_u (local.get $c) (i32.const 32))
              (then
                (i32.store (local.get $o) (i32.const 0x3030755c)) ;; \u00, little-endian
                (i32.store8 offset=4 (local.get $o)
                            (i32.load8_u (i32.shr_u (local.get $c) (i32.const 4))))
                (i32.store8 offset=5 (local.get $o)
                            (i32.load8_u (i32.and (local.get $c) (i32.const 15))))
                (local.set $o (i32.add (local.get $o) (i32.const 6))))
              (else
                (i32.store8 (local.get $o) (local.get $c))
                (local.set $o (i32.add (local.get $o) (i32.const 1)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.store16 (local.get $o) (i32.const 0x7d22)) ;; "} little-endian
    (local.set $olen (i32.sub (i32.add (local.get $o) (i32.const 2)) (local.get $out)))

    ;; the answer into Extism's memory, 8 bytes at a time, then the tail
    (local.set $ptr (call $alloc (i64.extend_i32_u (local.get $olen))))
    (local.set $i (i32.const 0))
    (block $out_words_done
      (loop $out_words
        (br_if $out_words_done (i32.gt_u (i32.add (local.get $i) (i32.const 8)) (local.get $olen)))
        (call $store_u64 (i64.add (local.get $ptr) (i64.extend_i32_u (local.get $i)))
                         (i64.load (i32.add (local.get $out) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $out_words)))
    (block $out_bytes_done
      (loop $out_bytes
        (br_if $out_bytes_done (i32.ge_u (local.get $i) (local.get $olen)))
        (call $store_u8 (i64.add (local.get $ptr) (i64.extend_i32_u (local.get $i)))
                        (i32.load8_u (i32.add (local.get $out) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $out_bytes)))
    (call $output_set (local.get $ptr) (i64.extend_i32_u (local.get $olen)))
    (i32.const 0))
)
