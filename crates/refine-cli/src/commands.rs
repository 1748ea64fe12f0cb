//! The subcommands: each turns arguments into library calls and reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use mnist_io::Splits;
use models::{BaseCnn, HeadConfig, RefineHead};
use serde_json::{Value, json};
use tch::Device;
use tch::nn::VarStore;
use trainer::{
    Event, FeatureCache, FitConfig, FreezePlan, HeadBinding, OptimizerConfig, Precision,
    RefineConfig, RefineReport, split_index,
};

use crate::args::{
    CacheChoice, CommonArgs, DeviceChoice, EvalArgs, HeadArgs, OptimizerName, PrecisionChoice,
    PretrainArgs, RefineArgs, RunArgs, TrainArgs,
};
use crate::output::{MetricsLog, prepare_out, write_json};
use crate::progress::Ui;
use crate::summary;

/// libtorch's version, which tch 0.26 is built against.
pub const LIBTORCH_VERSION: &str = "2.13.0";
/// Mixed into the seed before the head is initialised, so the head's initial weights do not
/// depend on whether the base was created, loaded or reused.
const HEAD_SEED_SALT: u64 = 0x5EED_0000_0000_0001;

/// Applies the common flags (threads, device) and returns the device.
pub fn setup(common: &CommonArgs) -> anyhow::Result<Device> {
    if let Some(threads) = common.threads {
        tch::set_num_threads(i32::try_from(threads.get()).unwrap_or(i32::MAX));
    }
    match common.device {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => bail!(
            "--device cuda: no CUDA GPU is available to this libtorch\nhint: use --device cpu (or \
             auto); a GPU build needs `cargo xtask libtorch --cuda` and a CUDA machine"
        ),
    }
}

fn data_dir(common: &CommonArgs) -> PathBuf {
    common.data_dir.clone().unwrap_or_else(|| Path::new("data").join(common.dataset.as_str()))
}

fn default_out(out: Option<&PathBuf>, common: &CommonArgs) -> PathBuf {
    out.cloned().unwrap_or_else(|| Path::new("runs").join(common.dataset.as_str()))
}

/// Loads train and test sets; returns them with the seconds it took.
pub(crate) fn load_data(common: &CommonArgs) -> anyhow::Result<(Splits, f64)> {
    let started = Instant::now();
    let dir = data_dir(common);
    if !dir.is_dir() {
        bail!(
            "data folder {} not found\nhint: run `cargo xtask fetch-data --dataset {}`",
            dir.display(),
            common.dataset.as_str()
        );
    }
    let splits = mnist_io::load_dir(&dir)
        .with_context(|| format!("loading {} from {}", common.dataset.as_str(), dir.display()))?;
    Ok((splits, started.elapsed().as_secs_f64()))
}

fn optimizer(train: &TrainArgs, lr: f64) -> OptimizerConfig {
    match train.optimizer {
        OptimizerName::Sgd => {
            OptimizerConfig::Sgd { lr, momentum: train.momentum, weight_decay: train.weight_decay }
        }
        OptimizerName::Adam => OptimizerConfig::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: train.weight_decay,
        },
    }
}

fn fit_config(
    train: &TrainArgs,
    lr: f64,
    epochs: usize,
    common: &CommonArgs,
    device: Device,
) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: train.batch_size,
        optimizer: optimizer(train, lr),
        seed: common.seed,
        device,
    }
}

pub(crate) fn new_base(seed: u64, n_classes: usize, device: Device) -> (VarStore, BaseCnn) {
    tch::manual_seed(seed as i64);
    let store = VarStore::new(device);
    let base = BaseCnn::new(&store.root(), n_classes as i64);
    (store, base)
}

pub(crate) fn new_head(seed: u64, n_classes: usize, device: Device) -> (VarStore, RefineHead) {
    tch::manual_seed((seed ^ HEAD_SEED_SALT) as i64);
    let store = VarStore::new(device);
    let head = RefineHead::new(
        &store.root(),
        HeadConfig { n_classes: n_classes as i64, ..HeadConfig::default() },
    );
    (store, head)
}

fn load_base(path: &Path, device: Device) -> anyhow::Result<(VarStore, BaseCnn)> {
    trainer::load_base(path, device).with_context(|| format!("loading the base {}", path.display()))
}

/// Forwards trainer events to the bars and the metrics log.
fn with_log<'a>(ui: &'a Ui, log: &'a mut MetricsLog, phase: &'a str) -> impl FnMut(Event) + 'a {
    let mut bars = ui.events();
    move |event| {
        let written = match &event {
            Event::Epoch(metrics) => log.append(phase, metrics),
            Event::Resumed { epochs } => log.restore(phase, epochs),
            _ => Ok(()),
        };
        if let Err(error) = written {
            tracing::warn!("{error:#}");
        }
        bars(event);
    }
}

fn versions(device: Device) -> Value {
    json!({
        "refine_cli": env!("CARGO_PKG_VERSION"),
        "tch": "0.26",
        "libtorch": LIBTORCH_VERSION,
        "device": format!("{device:?}").to_lowercase(),
        "threads": tch::get_num_threads(),
    })
}

fn dataset_json(common: &CommonArgs, splits: &Splits) -> Value {
    json!({
        "name": common.dataset.as_str(),
        "dir": data_dir(common),
        "train_examples": splits.train.len(),
        "test_examples": splits.test.len(),
        "train_sha256": trainer::dataset_hex(&splits.train),
        "test_sha256": trainer::dataset_hex(&splits.test),
    })
}

fn refine_config(head: &HeadArgs, fit: FitConfig, out: &Path) -> RefineConfig {
    if head.precision == PrecisionChoice::Bf16
        && fit.device == Device::Cpu
        && !models::cpu_has_native_bf16()
    {
        tracing::warn!(
            "this CPU has no bf16 instructions (AVX512-BF16): --precision bf16 rounds each \
             layer's output to bf16 but computes in f32, so it is no faster than f32 here"
        );
    }
    RefineConfig {
        fit,
        train_from: head.train_from.clone(),
        base_lr: head.base_lr,
        feature_cache: match head.feature_cache {
            CacheChoice::Memory => FeatureCache::Memory,
            CacheChoice::Disk => FeatureCache::Disk(out.join("cache")),
            CacheChoice::Off => FeatureCache::Off,
        },
        precision: match head.precision {
            PrecisionChoice::F32 => Precision::F32,
            PrecisionChoice::Bf16 => Precision::Bf16,
        },
        state_dir: Some(out.to_path_buf()),
    }
}

/// `--dry-run`: the freeze report, without training.
fn dry_run(
    base: &BaseCnn,
    base_store: &VarStore,
    head: &HeadArgs,
    optimizer: OptimizerConfig,
    common: &CommonArgs,
    device: Device,
) -> anyhow::Result<()> {
    let split = split_index(base, head.train_from.as_deref())?;
    let (head_store, _) = new_head(common.seed, base_store_classes(base_store), device);
    let plan = FreezePlan::new(base, base_store, &head_store, split, optimizer);
    if common.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        summary::print_freeze_plan(&plan);
    }
    Ok(())
}

fn base_store_classes(store: &VarStore) -> usize {
    store.variables().get("classifier.bias").map_or(10, |bias| bias.size()[0] as usize)
}

/// Pretrains a fresh base (resuming from OUT's saved state) and saves it to
/// OUT/base.safetensors; returns it with its report and fingerprint.
fn pretrain_and_save(
    ui: &Ui,
    log: &mut MetricsLog,
    splits: &Splits,
    fit: &FitConfig,
    out: &Path,
    seed: u64,
) -> anyhow::Result<(VarStore, BaseCnn, trainer::PretrainReport, String)> {
    let (mut store, base) = new_base(seed, splits.train.n_classes(), fit.device);
    let report = trainer::pretrain(
        &base,
        &mut store,
        &splits.train,
        &splits.test,
        fit,
        Some(out),
        &mut with_log(ui, log, "pretrain"),
    )?;
    let fingerprint = trainer::save_base(&out.join("base.safetensors"), &store)?;
    Ok((store, base, report, fingerprint))
}

/// Refines, saves the head (and a fine-tuned base), and returns the report's refine part.
#[allow(clippy::too_many_arguments)]
fn refine_and_save(
    ui: &Ui,
    log: &mut MetricsLog,
    base: &BaseCnn,
    base_store: &mut VarStore,
    splits: &Splits,
    config: &RefineConfig,
    out: &Path,
    seed: u64,
) -> anyhow::Result<(RefineReport, Value)> {
    let device = config.fit.device;
    let (head_store, head) = new_head(seed, splits.train.n_classes(), device);
    let report = trainer::refine(
        base,
        base_store,
        &head,
        &head_store,
        &splits.train,
        &splits.test,
        config,
        &mut with_log(ui, log, "refine"),
    )?;
    let mut files = json!({});
    if config.train_from.is_some() {
        let tuned = out.join("base-tuned.safetensors");
        trainer::save_base(&tuned, base_store)?;
        files["base_tuned"] = json!(tuned);
    }
    let head_path = out.join("head.safetensors");
    let binding = HeadBinding {
        base_fingerprint: report.base_fingerprint.clone(),
        train_from: config.train_from.clone(),
        config: HeadConfig { n_classes: splits.train.n_classes() as i64, ..HeadConfig::default() },
    };
    trainer::save_head(&head_path, &head_store, &binding)?;
    files["head"] = json!(head_path);
    Ok((report, files))
}

/// The keys scripts rely on, from a refine report.
fn refine_json(report: &RefineReport) -> Value {
    let plan = &report.freeze;
    let (frozen_tensors, frozen_parameters, trained_tensors, trained_parameters) = plan.counts();
    json!({
        "test_accuracy": report.evaluation.accuracy,
        "test_loss": report.evaluation.loss,
        "per_class_accuracy": report.evaluation.per_class_accuracy,
        "confusion_matrix": report.evaluation.confusion,
        "epochs": report.epochs,
        "resumed_epochs": report.resumed_epochs,
        "base_fingerprint_before": report.base_fingerprint_before,
        "base_fingerprint_after": report.base_fingerprint_after,
        "base_unchanged": report.base_unchanged,
        "head_changed": report.head_changed,
        "base_fingerprint": report.base_fingerprint,
        "train_from": plan.train_from,
        "frozen": plan.tensors.iter().filter(|t| !t.trained).map(|t| &t.name).collect::<Vec<_>>(),
        "trained": plan.tensors.iter().filter(|t| t.trained).map(|t| &t.name).collect::<Vec<_>>(),
        "frozen_tensors": frozen_tensors,
        "frozen_parameters": frozen_parameters,
        "trained_tensors": trained_tensors,
        "trained_parameters": trained_parameters,
        "features_from_disk": report.features_from_disk,
    })
}

/// The parts of a `run` or `refine` report that do not come from the refine report itself.
struct RefineDocument<'a> {
    command: &'static str,
    common: &'a CommonArgs,
    splits: &'a Splits,
    config: &'a RefineConfig,
    base: Value,
    load_s: f64,
    pretrain_s: f64,
    started: Instant,
}

impl RefineDocument<'_> {
    /// The whole report: context, the refine results, the output files and the timings.
    fn build(self, report: &RefineReport, mut files: Value, out: &Path) -> Value {
        files["report"] = json!(out.join("report.json"));
        let mut document = json!({
            "command": self.command,
            "versions": versions(self.config.fit.device),
            "dataset": dataset_json(self.common, self.splits),
            "config": self.config,
            "base": self.base,
            "files": files,
        });
        if let (Some(target), Value::Object(extra)) =
            (document.as_object_mut(), refine_json(report))
        {
            target.extend(extra);
        }
        document["timings"] = json!({
            "load_s": self.load_s,
            "pretrain_s": self.pretrain_s,
            "extract_s": report.extract_s,
            "refine_s": report.refine_s,
            "eval_s": report.eval_s,
            "total_s": self.started.elapsed().as_secs_f64(),
        });
        document
    }
}

fn emit(report: &Value, out: &Path, json_stdout: bool, human: impl FnOnce()) -> anyhow::Result<()> {
    write_json(&out.join("report.json"), report)?;
    if json_stdout {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        human();
    }
    Ok(())
}

/// `run`: the whole job.
pub fn run(args: &RunArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let device = setup(common)?;
    let (splits, load_s) = load_data(common)?;
    let out = default_out(args.out.as_ref(), common);
    let n_classes = splits.train.n_classes();

    if args.head.dry_run {
        let (base_store, base) = match &args.base {
            Some(path) => load_base(path, device)?,
            None => new_base(common.seed, n_classes, device),
        };
        return dry_run(
            &base,
            &base_store,
            &args.head,
            optimizer(&args.train, args.lr),
            common,
            device,
        );
    }
    prepare_out(&out)?;
    // Fail on a bad split point before spending minutes pretraining.
    split_index(&new_base(common.seed, n_classes, Device::Cpu).1, args.head.train_from.as_deref())?;
    let mut log = MetricsLog::create(out.join("metrics.jsonl"))?;

    let base_path = out.join("base.safetensors");
    let mut pretrain_s = 0.0;
    let mut base_info = json!({});
    let (mut base_store, base) = if let Some(path) = &args.base {
        base_info = json!({ "source": "loaded", "path": path });
        load_base(path, device)?
    } else if args.random_base {
        let (store, base) = new_base(common.seed, n_classes, device);
        trainer::save_base(&base_path, &store)?;
        base_info = json!({ "source": "random", "path": base_path });
        (store, base)
    } else {
        let settings_path = out.join("base.json");
        let settings = json!({
            "dataset": common.dataset.as_str(),
            "seed": common.seed,
            "epochs": args.pretrain_epochs,
            "fit": fit_config(&args.train, args.pretrain_lr, args.pretrain_epochs, common, device),
        });
        let saved: Option<Value> = std::fs::read_to_string(&settings_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        if base_path.exists() && saved.as_ref() == Some(&settings) {
            ui.message(&format!(
                "reusing the pretrained base {} (same settings)",
                base_path.display()
            ));
            base_info = json!({ "source": "reused", "path": base_path });
            load_base(&base_path, device)?
        } else {
            let fit =
                fit_config(&args.train, args.pretrain_lr, args.pretrain_epochs, common, device);
            let pretrain_started = Instant::now();
            let (store, base, report, _) =
                pretrain_and_save(ui, &mut log, &splits, &fit, &out, common.seed)?;
            pretrain_s = pretrain_started.elapsed().as_secs_f64();
            write_json(&settings_path, &settings)?;
            base_info = json!({
                "source": "pretrained",
                "path": base_path,
                "pretrain_epochs": report.epochs,
                "pretrain_test_accuracy": report.evaluation.accuracy,
            });
            (store, base)
        }
    };

    let config = refine_config(
        &args.head,
        fit_config(&args.train, args.lr, args.head.epochs, common, device),
        &out,
    );
    let (report, mut files) =
        refine_and_save(ui, &mut log, &base, &mut base_store, &splits, &config, &out, common.seed)?;
    files["base"] = json!(base_path);
    files["metrics"] = json!(out.join("metrics.jsonl"));
    let document = RefineDocument {
        command: "run",
        common,
        splits: &splits,
        config: &config,
        base: base_info,
        load_s,
        pretrain_s,
        started,
    }
    .build(&report, files, &out);
    emit(&document, &out, common.json, || summary::print_run(&document))
}

/// `pretrain`: a base alone.
pub fn pretrain(args: &PretrainArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let device = setup(common)?;
    let (splits, load_s) = load_data(common)?;
    let out = default_out(args.out.as_ref(), common);
    prepare_out(&out)?;
    let mut log = MetricsLog::create(out.join("metrics.jsonl"))?;
    let fit = fit_config(&args.train, args.lr, args.epochs, common, device);
    let (_, _, report, fingerprint) =
        pretrain_and_save(ui, &mut log, &splits, &fit, &out, common.seed)?;
    let base_path = out.join("base.safetensors");
    let document = json!({
        "command": "pretrain",
        "versions": versions(device),
        "dataset": dataset_json(common, &splits),
        "config": fit,
        "epochs": report.epochs,
        "resumed_epochs": report.resumed_epochs,
        "test_accuracy": report.evaluation.accuracy,
        "test_loss": report.evaluation.loss,
        "per_class_accuracy": report.evaluation.per_class_accuracy,
        "confusion_matrix": report.evaluation.confusion,
        "base_fingerprint": fingerprint,
        "files": { "base": base_path },
        "timings": { "load_s": load_s, "pretrain_s": report.train_s, "total_s": started.elapsed().as_secs_f64() },
    });
    emit(&document, &out, common.json, || summary::print_pretrain(&document))
}

/// `refine`: a head over a given frozen base.
pub fn refine(args: &RefineArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let device = setup(common)?;
    let (mut base_store, base) = load_base(&args.base, device)?;
    if args.head.dry_run {
        return dry_run(
            &base,
            &base_store,
            &args.head,
            optimizer(&args.train, args.lr),
            common,
            device,
        );
    }
    split_index(&base, args.head.train_from.as_deref())?;
    let (splits, load_s) = load_data(common)?;
    let out = default_out(args.out.as_ref(), common);
    prepare_out(&out)?;
    let mut log = MetricsLog::create(out.join("metrics.jsonl"))?;
    let config = refine_config(
        &args.head,
        fit_config(&args.train, args.lr, args.head.epochs, common, device),
        &out,
    );
    let (report, files) =
        refine_and_save(ui, &mut log, &base, &mut base_store, &splits, &config, &out, common.seed)?;
    let base_info = json!({ "source": "loaded", "path": args.base });
    let document = RefineDocument {
        command: "refine",
        common,
        splits: &splits,
        config: &config,
        base: base_info,
        load_s,
        pretrain_s: 0.0,
        started,
    }
    .build(&report, files, &out);
    emit(&document, &out, common.json, || summary::print_run(&document))
}

/// `eval`: a base, or a base + head, on the test set.
pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let device = setup(common)?;
    let (base_store, base) = load_base(&args.base, device)?;
    let (splits, _) = load_data(common)?;
    let evaluation = match &args.head {
        Some(head_path) => {
            let fingerprint = trainer::store_fingerprint(&base_store);
            let (_, head, _) =
                trainer::load_head(head_path, device, &fingerprint, args.allow_other_base)
                    .with_context(|| format!("loading the head {}", head_path.display()))?;
            trainer::evaluate_head(&base, &head, &splits.test, device)?
        }
        None => trainer::evaluate_base(&base, &splits.test, device)?,
    };
    let document = json!({
        "command": "eval",
        "base": args.base,
        "head": args.head,
        "test_examples": splits.test.len(),
        "test_accuracy": evaluation.accuracy,
        "test_loss": evaluation.loss,
        "per_class_accuracy": evaluation.per_class_accuracy,
        "confusion_matrix": evaluation.confusion,
    });
    if common.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        summary::print_eval(&document);
    }
    Ok(())
}
