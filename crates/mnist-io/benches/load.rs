//! `cargo bench -p mnist-io`: loading MNIST's 60,000-image train set from raw IDX and from
//! `.gz`, median of repeated runs, next to `zcat` on the same `.gz` file.
//!
//! Needs `data/mnist` (run `cargo xtask fetch-data`); the `.gz` copy is written to a temporary
//! folder by this benchmark.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Repetitions under `cargo bench`; `cargo test --all-targets` runs this binary once as a smoke
/// test (without `--bench`), with one repetition.
fn runs() -> usize {
    if std::env::args().any(|arg| arg == "--bench") { 15 } else { 1 }
}

/// The median wall time of `runs()` calls after one warm-up call.
fn median(mut run: impl FnMut()) -> Duration {
    run();
    let runs = runs();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let raw = dir.join("train-images-idx3-ubyte");
    if !raw.exists() {
        eprintln!("skipping: {} is absent (run `cargo xtask fetch-data`)", raw.display());
        return;
    }
    let raw_time = median(|| {
        let images = mnist_io::Images::read(&raw).expect("raw MNIST reads");
        assert_eq!(images.count(), 60_000);
    });

    let tmp = std::env::temp_dir().join(format!("mnist-io-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp folder");
    let gz = tmp.join("train-images-idx3-ubyte.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", raw.display(), gz.display()))
        .status()
        .expect("gzip runs");
    assert!(status.success(), "gzip failed");
    let gz_time = median(|| {
        let images = mnist_io::Images::read(&gz).expect("gzipped MNIST reads");
        assert_eq!(images.count(), 60_000);
    });
    let zcat_time = median(|| {
        let status =
            Command::new("zcat").arg(&gz).stdout(Stdio::null()).status().expect("zcat runs");
        assert!(status.success());
    });
    let _ = std::fs::remove_dir_all(&tmp);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| load train images (60,000) | median of {} |", runs());
    println!("|---|---|");
    println!("| raw IDX | {:.1} ms |", ms(raw_time));
    println!("| .gz | {:.1} ms |", ms(gz_time));
    println!("| zcat on the same .gz (to /dev/null) | {:.1} ms |", ms(zcat_time));
    println!("| .gz / zcat | {:.2}x |", gz_time.as_secs_f64() / zcat_time.as_secs_f64());
}
