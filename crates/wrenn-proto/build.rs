//! Generates buffa messages and Connect service traits/clients from `proto/`.

use std::path::PathBuf;

fn main() {
    // Read at run time, not with env!(): a build script binary may be reused from a clone at
    // another path that shares the target dir.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = PathBuf::from(manifest_dir).join("../../proto");
    // Honour a PROTOC that is already set (e.g. Debian's protoc); otherwise use the vendored one.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let wkt = protoc_bin_vendored::include_path().expect("vendored protoc include path");
    let envd = root.join("envd");
    let files = [
        envd.join("process/process.proto"),
        envd.join("filesystem/filesystem.proto"),
        root.join("hostagent/v1/hostagent.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    connectrpc_build::Config::new()
        .files(&files)
        .includes(&[envd, root.clone(), wkt])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("compile protos");
}
