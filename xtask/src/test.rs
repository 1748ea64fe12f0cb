//! `cargo xtask test`: the project's one test command. After `setup`, it checks formatting and
//! lints, runs every test of the workspace, and checks the crate-boundary invariants.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check`, `cargo clippy` and `cargo doc` (tests and invariants still run).
    #[arg(long)]
    no_lint: bool,
}

/// Runs the checks in order, stopping at the first failure.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    if !args.no_lint {
        cargo(root, &["fmt", "--all", "--check"])?;
        cargo(root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
        // Broken intra-doc links and malformed doc comments fail like lints do.
        cargo_with_env(
            root,
            &["doc", "--no-deps", "--workspace"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )?;
    }
    // Doc tests first: most crates have none, and a summary of "0 passed" should not be the
    // last word of the run.
    cargo(root, &["test", "--workspace", "--doc"])?;
    cargo(root, &["test", "--workspace", "--all-targets"])?;
    for package in ["kernels", "mnist-io", "xtask"] {
        check_no_tch(root, package)?;
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(root, args, &[])
}

fn cargo_with_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("xtask test: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `cargo tree -p PACKAGE -i tch` must find nothing: the crate builds without libtorch.
fn check_no_tch(root: &Path, package: &str) -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--quiet", "-e", "normal,build", "-p", package, "-i", "tch"])
        .current_dir(root)
        .output()
        .context("running cargo tree")?;
    let tree = String::from_utf8_lossy(&output.stdout);
    if !tree.trim().is_empty() {
        bail!("{package} depends on tch, which it must never do:\n{tree}");
    }
    eprintln!("xtask test: {package} does not depend on tch");
    Ok(())
}
