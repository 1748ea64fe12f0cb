//! Build script shared by every package that links libtorch: records libtorch's `lib/` folder as
//! an rpath in the package's binaries and tests, so they run from any folder without
//! `LD_LIBRARY_PATH`. `LIBTORCH` comes from `.cargo/config.toml` (or the user's environment).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
