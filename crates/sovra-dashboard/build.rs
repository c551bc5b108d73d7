//! Points `DASHBOARD_DIST` at the front end's production build
//! (`dashboard/dist`, made by `scripts/dashboard.sh`), or, when it was not
//! built, at a one-page fallback that says how to build it.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../../dashboard/dist");
    // A directory: cargo reruns this script when any file under it changes.
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-env-changed=SOVRA_DASHBOARD_DIST");
    let chosen = match std::env::var("SOVRA_DASHBOARD_DIST") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if dist.join("index.html").is_file() => dist,
        _ => fallback(),
    };
    let chosen = chosen.canonicalize().unwrap_or(chosen);
    println!("cargo:rustc-env=DASHBOARD_DIST={}", chosen.display());
}

fn fallback() -> PathBuf {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dashboard-fallback");
    std::fs::create_dir_all(&out).expect("create the fallback directory");
    write(
        &out.join("index.html"),
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sovra dashboard not built</title></head>\
         <body><h1>Dashboard not built</h1>\
         <p>This Sovra was compiled without its dashboard. Run <code>scripts/dashboard.sh</code> \
         (it needs Node.js and npm), then build Sovra again (<code>cargo build</code>); \
         <code>scripts/run.sh</code> and <code>scripts/test.sh</code> do both.</p>\
         <p data-fallback=\"1\">The API under <code>/_/api/</code> works without it.</p></body></html>\n",
    );
    out
}

fn write(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).expect("write the fallback page");
    }
}
