//! Shared helpers of the end-to-end tests: the `refine-cli` binary, and small IDX datasets
//! written by the tests themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use mnist_io::{Dataset, Images, MNIST_FILES, SplitMix64};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The `refine-cli` binary, built once per test run (dev profile) with the workspace's cargo.
pub fn cli_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "refine-cli"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo can run");
        assert!(status.success(), "building refine-cli failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from);
        target.join("debug/refine-cli")
    })
}

/// Runs the binary with `args` in `cwd`, with no terminal (so no progress bars).
pub fn run_cli(cwd: &Path, args: &[&str]) -> Output {
    Command::new(cli_binary()).args(args).current_dir(cwd).output().expect("refine-cli starts")
}

/// `n` 28x28 images of 10 classes: class `c` is a bright 6x6 square at a position of its own,
/// on noise. Learnable in a few epochs, like a tiny MNIST.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = SplitMix64::new(seed);
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = (rng.next_u64() % 10) as usize;
        let (top, left) = (2 + 5 * (class / 5) * 2, 2 + 5 * (class % 5));
        for row in 0..28 {
            for col in 0..28 {
                let inside = (top..top + 6).contains(&row) && (left..left + 6).contains(&col);
                let noise = (rng.next_u64() % 50) as u8;
                pixels.push(if inside { 200 + noise } else { noise });
            }
        }
        labels.push(class as u8);
    }
    Dataset::new(Images::new(pixels, n, 28, 28).expect("shape"), labels, 10).expect("labels")
}

/// Writes a train and a test set under the standard MNIST file names in `dir`.
pub fn write_dataset(dir: &Path, train: &Dataset, test: &Dataset) {
    std::fs::create_dir_all(dir).expect("create data dir");
    let [train_images, train_labels, test_images, test_labels] =
        MNIST_FILES.map(|name| dir.join(name));
    train.write(&train_images, &train_labels).expect("write train");
    test.write(&test_images, &test_labels).expect("write test");
}

/// The real MNIST folder, when `cargo xtask fetch-data` has put it in place.
pub fn real_mnist() -> Option<PathBuf> {
    let dir = workspace_root().join("data/mnist");
    if dir.join(MNIST_FILES[0]).exists() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent (run `cargo xtask fetch-data`)", dir.display());
        None
    }
}
