//! Rebuilds the crate when a migration changes (`sqlx::migrate!` embeds them at compile time)
//! and embeds the dashboard: every file of `frontend/build` (or `$WRENN_DASHBOARD_DIR`) becomes
//! an `include_bytes!` entry of `$OUT_DIR/dashboard_assets.rs`, with the SHA-256 of the inline
//! scripts of its `index.html` for the Content-Security-Policy. Without a built frontend the
//! crate still compiles and serves a placeholder page.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::Digest as _;

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
    dashboard();
}

fn dashboard() {
    println!("cargo:rerun-if-env-changed=WRENN_DASHBOARD_DIR");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let frontend = manifest.join("../../frontend");
    let dir = std::env::var_os("WRENN_DASHBOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| frontend.join("build"));
    let mut files = Vec::new();
    let built = dir.join("index.html").is_file();
    if built {
        println!("cargo:rerun-if-changed={}", dir.display());
        walk(&dir, &dir, &mut files);
        files.sort();
    } else if frontend.is_dir() {
        // Watching the sources' folder notices the build output when it appears.
        println!("cargo:rerun-if-changed={}", frontend.display());
    }
    let mut hashes = Vec::new();
    if built {
        let index = std::fs::read_to_string(dir.join("index.html")).expect("read index.html");
        hashes = inline_script_hashes(&index);
    }
    let mut out = String::new();
    writeln!(out, "pub(crate) const BUILT: bool = {built};").unwrap();
    writeln!(out, "pub(crate) static ASSETS: &[(&str, &[u8])] = &[").unwrap();
    for (rel, abs) in &files {
        writeln!(out, "    ({rel:?}, include_bytes!({abs:?})),").unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(
        out,
        "pub(crate) static SCRIPT_HASHES: &[&str] = &{hashes:?};"
    )
    .unwrap();
    let path = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("dashboard_assets.rs");
    std::fs::write(path, out).expect("write dashboard_assets.rs");
}

/// `(/url/path, absolute file path)` of every file under `dir`.
fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).expect("read the dashboard build folder");
    for e in entries {
        let e = e.expect("read the dashboard build folder");
        let path = e.path();
        let ty = e.file_type().expect("file type");
        if ty.is_dir() {
            walk(root, &path, files);
        } else if ty.is_file() {
            let rel = path.strip_prefix(root).expect("under the root");
            let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            let abs = std::fs::canonicalize(&path).expect("canonical path");
            files.push((url, abs.to_string_lossy().into_owned()));
        }
    }
}

/// `'sha256-…'` sources of the inline `<script>` elements (those without `src`).
fn inline_script_hashes(html: &str) -> Vec<String> {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        let after = &rest[start..];
        let Some(tag_end) = after.find('>') else {
            break;
        };
        let tag = &after[..tag_end];
        let body = &after[tag_end + 1..];
        let Some(close) = body.find("</script>") else {
            break;
        };
        if !tag.contains(" src=") {
            let digest = sha2::Sha256::digest(&body.as_bytes()[..close]);
            let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
            hashes.push(format!("'sha256-{b64}'"));
        }
        rest = &body[close + "</script>".len()..];
    }
    hashes
}
