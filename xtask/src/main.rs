//! `cargo xtask`: provisions libtorch and the datasets, and runs the whole test suite.
//!
//! Run `cargo xtask --help` for the tasks. xtask never depends on tch: it must build and run
//! before libtorch exists.

mod archive;
mod data;
mod fsutil;
mod libtorch;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project automation for the refine workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Provision libtorch 2.13.0 (`.libtorch/`) and fetch MNIST (`data/mnist/`).
    Setup,
    /// Provision libtorch 2.13.0 in `.libtorch/` (or check the one `LIBTORCH` points to).
    Libtorch(libtorch::Args),
    /// Download and verify the raw IDX files of a dataset into `data/<dataset>/`.
    FetchData(data::Args),
    /// `setup`, then the whole test suite: fmt, clippy, the workspace's tests and the crate
    /// invariants (no tch under kernels, mnist-io or xtask).
    Test(test::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Setup => setup(&root),
        Task::Libtorch(args) => libtorch::run(&root, &args),
        Task::FetchData(args) => data::run(&root, &args),
        Task::Test(args) => setup(&root).and_then(|()| test::run(&root, &args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn setup(root: &Path) -> anyhow::Result<()> {
    libtorch::run(root, &libtorch::Args::default())?;
    data::run(root, &data::Args::default())
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
