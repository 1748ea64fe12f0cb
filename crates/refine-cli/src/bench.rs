//! `bench`: every phase timed on full MNIST (a warm-up, then the median of `--repeat` runs), the
//! machine's fp32 matmul rate measured in the same run, peak memory, the bench's own time, and
//! optionally the PyTorch and JAX reference scripts run side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tch::{Kind, Tensor};
use trainer::{FeatureCache, FitConfig, OptimizerConfig, Precision, RefineConfig};

use crate::args::BenchArgs;
use crate::commands::{load_data, new_base, new_head, setup};
use crate::output::{prepare_out, write_atomic, write_json};
use crate::progress::Ui;

/// Multiply-adds of one base forward per image (conv1 5%, conv2 78%, representation 17%).
const BASE_MACS_PER_IMAGE: f64 = 4_643_840.0;
/// Side of the square matrices of the matmul probe.
const MATMUL_SIDE: i64 = 2048;
/// Training and test images of the data that training phases warm up on: enough to run every
/// code path (full batches and a partial one) without paying for a whole extra epoch.
const WARM_UP_EXAMPLES: (usize, usize) = (5_000, 1_000);

/// Seconds of each timed run.
struct Timing(Vec<f64>);

impl Timing {
    fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn json(&self) -> Value {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(0.0, f64::max);
        json!({ "median_s": self.median(), "min_s": min, "max_s": max, "runs": self.0 })
    }
}

/// Runs `warm_up` once, then `measure` `repeat` times; each call of `measure` returns its own
/// seconds.
fn time(
    repeat: usize,
    warm_up: impl FnOnce() -> anyhow::Result<()>,
    mut measure: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Timing> {
    warm_up()?;
    Ok(Timing((0..repeat).map(|_| measure()).collect::<anyhow::Result<_>>()?))
}

/// [`time`] with one untimed run of `measure` as the warm-up (for phases of a second or less).
fn time_cheap(
    repeat: usize,
    mut measure: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Timing> {
    measure()?;
    time(repeat, || Ok(()), measure)
}

fn wall(function: impl FnOnce()) -> f64 {
    let started = Instant::now();
    function();
    started.elapsed().as_secs_f64()
}

/// Peak resident memory of this process, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `bench`.
pub fn bench(args: &BenchArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let device = setup(common)?;
    let repeat = args.repeat.get();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/bench"));
    prepare_out(&out)?;
    let (splits, _) = load_data(common)?;
    let data_dir =
        common.data_dir.clone().unwrap_or_else(|| Path::new("data").join(common.dataset.as_str()));
    let n_classes = splits.train.n_classes();
    let first = |dataset: &mnist_io::Dataset, n: usize| {
        dataset.subset(&(0..n.min(dataset.len())).collect::<Vec<_>>())
    };
    let warm_up_train = first(&splits.train, WARM_UP_EXAMPLES.0)?;
    let warm_up_test = first(&splits.test, WARM_UP_EXAMPLES.1)?;
    let mut phases = serde_json::Map::new();

    ui.message("bench: load");
    let load = time_cheap(repeat, || Ok(wall(|| drop(mnist_io::load_dir(&data_dir)))))?;
    phases.insert("load".into(), load.json());

    ui.message("bench: matmul probe");
    let a = Tensor::randn([MATMUL_SIDE, MATMUL_SIDE], (Kind::Float, device));
    let b = Tensor::randn([MATMUL_SIDE, MATMUL_SIDE], (Kind::Float, device));
    let matmul = time_cheap(repeat.max(5), || {
        Ok(wall(|| {
            let _ = a.matmul(&b).sum(Kind::Float).double_value(&[]);
        }))
    })?;
    let matmul_gflops = 2.0 * (MATMUL_SIDE as f64).powi(3) / matmul.median() / 1e9;

    let fit = |epochs| FitConfig {
        epochs,
        batch_size: args.batch_size,
        optimizer: OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
        seed: common.seed,
        device,
    };
    let refine_once = |train: &mnist_io::Dataset,
                       test: &mnist_io::Dataset,
                       cache: FeatureCache,
                       precision: Precision|
     -> anyhow::Result<trainer::RefineReport> {
        let (mut base_store, base) = new_base(common.seed, n_classes, device);
        let (head_store, head) = new_head(common.seed, n_classes, device);
        let config = RefineConfig {
            fit: fit(1),
            train_from: None,
            base_lr: None,
            feature_cache: cache,
            precision,
            state_dir: None,
        };
        Ok(trainer::refine(
            &base,
            &mut base_store,
            &head,
            &head_store,
            train,
            test,
            &config,
            &mut |_| {},
        )?)
    };

    // One refine epoch over the full data after a warm-up over the first few examples.
    let time_refine =
        |cache: FeatureCache,
         precision: Precision,
         seconds: &mut dyn FnMut(&trainer::RefineReport) -> f64| {
            let warm_up =
                || refine_once(&warm_up_train, &warm_up_test, cache.clone(), precision).map(drop);
            time(repeat, warm_up, || {
                Ok(seconds(&refine_once(&splits.train, &splits.test, cache.clone(), precision)?))
            })
        };

    ui.message("bench: feature extraction + refine epoch over cached features");
    let mut extract = Vec::new();
    let cached = time_refine(FeatureCache::Memory, Precision::F32, &mut |report| {
        extract.push(report.extract_s);
        report.epochs[0].seconds
    })?;
    let extract = Timing(extract);
    let n_images = (splits.train.len() + splits.test.len()) as f64;
    let extract_gflops = 2.0 * BASE_MACS_PER_IMAGE * n_images / extract.median() / 1e9;
    phases.insert("extract".into(), extract.json());
    phases.insert("refine_epoch_cached".into(), cached.json());

    ui.message("bench: feature extraction in bf16");
    let extract_bf16 =
        time_refine(FeatureCache::Memory, Precision::Bf16, &mut |report| report.extract_s)?;
    phases.insert("extract_bf16".into(), extract_bf16.json());

    ui.message("bench: refine epoch, naive (frozen forward per batch)");
    let naive =
        time_refine(FeatureCache::Off, Precision::F32, &mut |report| report.epochs[0].seconds)?;
    phases.insert("refine_epoch_naive".into(), naive.json());

    ui.message("bench: evaluation on the test set (base + head from images)");
    let (_, base) = new_base(common.seed, n_classes, device);
    let (_, head) = new_head(common.seed, n_classes, device);
    let eval_full = time_cheap(repeat, || {
        let started = Instant::now();
        trainer::evaluate_head(&base, &head, &splits.test, device)?;
        Ok(started.elapsed().as_secs_f64())
    })?;
    phases.insert("eval".into(), eval_full.json());

    ui.message("bench: pretraining epoch");
    let pretrain_once = |train, test| -> anyhow::Result<f64> {
        let (mut store, base) = new_base(common.seed, n_classes, device);
        let report = trainer::pretrain(&base, &mut store, train, test, &fit(1), None, &mut |_| {})?;
        Ok(report.epochs[0].seconds)
    };
    let pretrain = time(
        repeat,
        || pretrain_once(&warm_up_train, &warm_up_test).map(drop),
        || pretrain_once(&splits.train, &splits.test),
    )?;
    phases.insert("pretrain_epoch".into(), pretrain.json());

    let mut document = json!({
        "machine": { "cpu": cpu_model(), "cores": std::thread::available_parallelism().map_or(0, usize::from) },
        "versions": { "refine_cli": env!("CARGO_PKG_VERSION"), "tch": "0.26", "libtorch": crate::commands::LIBTORCH_VERSION },
        "device": format!("{device:?}").to_lowercase(),
        "threads": tch::get_num_threads(),
        "repeat": repeat,
        "batch_size": args.batch_size,
        "phases": phases,
        "matmul_gflops": matmul_gflops,
        "extract_gflops": extract_gflops,
        "extract_fraction_of_matmul": extract_gflops / matmul_gflops,
        "naive_over_cached_epoch": naive.median() / cached.median(),
        "peak_rss_mib": peak_rss_mib(),
        "bench_s": started.elapsed().as_secs_f64(),
    });
    let mut references = serde_json::Map::new();
    let mut speedups = serde_json::Map::new();
    for reference in &REFERENCES {
        let Some(python) = (reference.python)(args) else { continue };
        ui.message(&format!("bench: {} reference", reference.label));
        let measured =
            run_reference(python, reference.script, &data_dir, repeat, args.batch_size.get())?;
        let mut ratios = serde_json::Map::new();
        for (name, ours) in document["phases"].as_object().cloned().unwrap_or_default() {
            if let (Some(theirs), Some(ours)) =
                (measured["phases"][&name]["median_s"].as_f64(), ours["median_s"].as_f64())
            {
                ratios.insert(name, json!(theirs / ours));
            }
        }
        references.insert(reference.name.to_owned(), measured);
        speedups.insert(reference.name.to_owned(), Value::Object(ratios));
    }
    if !references.is_empty() {
        document["references"] = Value::Object(references);
        document["speedup"] = Value::Object(speedups);
    }
    write_json(&out.join("bench.json"), &document)?;
    let table = markdown(&document);
    write_atomic(&out.join("bench.md"), table.as_bytes())?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// A reference implementation the bench can run side by side.
struct Reference {
    /// Key in bench.json (`references.<name>`, `speedup.<name>`).
    name: &'static str,
    /// Column heading.
    label: &'static str,
    /// File in `benches/reference/`.
    script: &'static str,
    /// The flag that names the Python to run it with.
    python: fn(&BenchArgs) -> Option<&PathBuf>,
}

const REFERENCES: [Reference; 2] = [
    Reference {
        name: "pytorch",
        label: "PyTorch eager",
        script: "torch_reference.py",
        python: |args| args.reference.as_ref(),
    },
    Reference {
        name: "jax",
        label: "JAX (jit)",
        script: "jax_reference.py",
        python: |args| args.jax_reference.as_ref(),
    },
];

fn run_reference(
    python: &Path,
    script: &str,
    data_dir: &Path,
    repeat: usize,
    batch_size: usize,
) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/reference").join(script);
    let output = Command::new(python)
        .arg(&script)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--threads", &tch::get_num_threads().to_string()])
        .args(["--repeat", &repeat.to_string(), "--batch-size", &batch_size.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!("the reference script failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).context("the reference script's output is not JSON")
}

/// The markdown table of a bench document.
fn markdown(document: &Value) -> String {
    let phases = [
        ("load", "load MNIST (raw IDX, train + test)"),
        ("extract", "feature extraction (70,000 images)"),
        ("extract_bf16", "feature extraction, bf16 (`--precision bf16`)"),
        ("refine_epoch_cached", "refine epoch over cached features"),
        ("refine_epoch_naive", "refine epoch, naive (frozen forward per batch)"),
        ("eval", "evaluation (10,000 test images, base + head)"),
        ("pretrain_epoch", "pretraining epoch (whole base)"),
    ];
    let references: Vec<&Reference> = REFERENCES
        .iter()
        .filter(|reference| document["references"].get(reference.name).is_some())
        .collect();
    let mut table = format!(
        "Machine: {} ({} cores), {} threads, libtorch {}, batch {}; median of {} runs after a warm-up.\n\n",
        document["machine"]["cpu"].as_str().unwrap_or("?"),
        document["machine"]["cores"],
        document["threads"],
        document["versions"]["libtorch"].as_str().unwrap_or("?"),
        document["batch_size"],
        document["repeat"],
    );
    table.push_str("| phase | refine (s) | min | max |");
    for reference in &references {
        table.push_str(&format!(" {} (s) | speed-up |", reference.label));
    }
    table.push_str("\n|---|---|---|---|");
    table.push_str(&"---|---|".repeat(references.len()));
    table.push('\n');
    for (key, label) in phases {
        let phase = &document["phases"][key];
        let cell =
            |field: &str| phase[field].as_f64().map_or("-".to_owned(), |v| format!("{v:.3}"));
        table.push_str(&format!(
            "| {label} | {} | {} | {} |",
            cell("median_s"),
            cell("min_s"),
            cell("max_s")
        ));
        for reference in &references {
            let theirs = document["references"][reference.name]["phases"][key]["median_s"]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.3}"));
            let ratio = document["speedup"][reference.name][key]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.2}x"));
            table.push_str(&format!(" {theirs} | {ratio} |"));
        }
        table.push('\n');
    }
    table.push_str(&format!(
        "\nfp32 matmul ({MATMUL_SIDE}x{MATMUL_SIDE}): {:.0} GFLOP/s; extraction: {:.0} GFLOP/s ({:.0}% of it). Naive / cached refine epoch: {:.1}x. Peak memory: {:.0} MiB. The bench took {:.0} s (the references' time not counted).\n",
        document["matmul_gflops"].as_f64().unwrap_or(0.0),
        document["extract_gflops"].as_f64().unwrap_or(0.0),
        document["extract_fraction_of_matmul"].as_f64().unwrap_or(0.0) * 100.0,
        document["naive_over_cached_epoch"].as_f64().unwrap_or(0.0),
        document["peak_rss_mib"].as_f64().unwrap_or(0.0),
        document["bench_s"].as_f64().unwrap_or(0.0),
    ));
    table
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::markdown;

    fn document(references: serde_json::Value, speedup: serde_json::Value) -> serde_json::Value {
        json!({
            "machine": { "cpu": "test cpu", "cores": 2 },
            "versions": { "libtorch": "2.13.0" },
            "threads": 2, "batch_size": 128, "repeat": 3,
            "phases": { "extract": { "median_s": 2.0, "min_s": 1.9, "max_s": 2.1 } },
            "references": references,
            "speedup": speedup,
            "matmul_gflops": 200.0, "extract_gflops": 300.0, "extract_fraction_of_matmul": 1.5,
            "naive_over_cached_epoch": 20.0, "peak_rss_mib": 700.0, "bench_s": 150.0,
        })
    }

    #[test]
    fn the_table_has_a_column_pair_for_each_reference_that_ran() {
        let jax_only = document(
            json!({ "jax": { "phases": { "extract": { "median_s": 2.4 } } } }),
            json!({ "jax": { "extract": 1.2 } }),
        );
        let table = markdown(&jax_only);
        assert!(table.contains("| phase | refine (s) | min | max | JAX (jit) (s) | speed-up |\n"));
        assert!(!table.contains("PyTorch"));
        assert!(table.contains(
            "| feature extraction (70,000 images) | 2.000 | 1.900 | 2.100 | 2.400 | 1.20x |"
        ));
        // A phase no reference measured shows dashes, not zeros.
        assert!(table.contains("| pretraining epoch (whole base) | - | - | - | - | - |"));

        assert!(table.contains("Peak memory: 700 MiB. The bench took 150 s"));

        let neither = markdown(&document(serde_json::Value::Null, serde_json::Value::Null));
        assert!(neither.contains("| phase | refine (s) | min | max |\n|---|---|---|---|\n"));
    }
}
