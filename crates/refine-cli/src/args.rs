//! Command-line arguments (clap derive). Defaults live here: the libraries take explicit configs.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Train a small refine head on the representation of a frozen base CNN (MNIST, Fashion-MNIST).
///
/// With no subcommand, `run` does the whole job: load the data, pretrain (or reuse) a base,
/// freeze it, train the head, evaluate, and prove the base is bit-for-bit unchanged.
#[derive(Parser, Debug)]
#[command(
    name = "refine-cli",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true,
    after_help = "Example: refine-cli run --epochs 3 --json"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole job (the default): pretrain or reuse a base, freeze it, train the head, report.
    #[command(
        after_help = "Example: refine-cli run --dataset fashion-mnist --epochs 5 --out runs/fashion"
    )]
    Run(RunArgs),
    /// Train a base alone and write OUT/base.safetensors.
    #[command(after_help = "Example: refine-cli pretrain --epochs 2 --out runs/base")]
    Pretrain(PretrainArgs),
    /// Train a head over a frozen base file and write OUT/head.safetensors.
    #[command(
        after_help = "Example: refine-cli refine --base runs/mnist/base.safetensors --epochs 3"
    )]
    Refine(RefineArgs),
    /// Evaluate a base (its own classifier) or a base + head on the test set.
    #[command(
        after_help = "Example: refine-cli eval --base runs/mnist/base.safetensors --head runs/mnist/head.safetensors"
    )]
    Eval(EvalArgs),
    /// Classify images (IDX image files, PNG or JPEG) with a base + head; one JSON line each.
    #[command(
        after_help = "Images follow MNIST's convention: a light digit on a dark background, 28x28 \
(other sizes are resized). Use --invert for dark-on-light drawings.\n\n\
Example: refine-cli predict --base runs/mnist/base.safetensors --head runs/mnist/head.safetensors digit.png"
    )]
    Predict(PredictArgs),
    /// Time every phase on full MNIST (median of repeats), with the machine's matmul rate, and
    /// optionally the PyTorch and JAX references side by side; writes bench.json and bench.md.
    #[command(
        after_help = "Example: refine-cli bench --repeat 3 --reference /path/to/python3 --jax-reference /path/to/python3"
    )]
    Bench(BenchArgs),
    /// Show a checkpoint's tensors (name, shape, dtype, fingerprint) and what a head is bound to.
    #[command(
        after_help = "Example: refine-cli inspect runs/mnist/head.safetensors --show-weights"
    )]
    Inspect(InspectArgs),
}

/// Which dataset.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// MNIST digits.
    Mnist,
    /// Zalando's Fashion-MNIST.
    FashionMnist,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error when there is none).
    Cuda,
    /// CUDA when available, else the CPU.
    Auto,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerName {
    /// SGD with momentum.
    Sgd,
    /// Adam.
    Adam,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// float32, exactly as trained.
    F32,
    /// bfloat16 for the frozen part's forward: faster on CPUs with bf16 instructions; elsewhere
    /// each layer's output is rounded to bf16 over float32 arithmetic, as fast as f32. The
    /// report shows the accuracy.
    Bf16,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheChoice {
    /// Run the frozen part once; keep its outputs in memory.
    Memory,
    /// As memory, and keep them under OUT/cache/ for later runs.
    Disk,
    /// Run the frozen part on every batch (the seed's way).
    Off,
}

/// Flags every command shares.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The dataset.
    #[arg(long, value_enum, default_value_t = DatasetName::Mnist)]
    pub dataset: DatasetName,
    /// Folder with the four IDX files [default: data/<dataset>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed for initial weights and batch order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Threads for CPU compute [default: all cores].
    #[arg(long)]
    pub threads: Option<NonZeroUsize>,
    /// Print the final report as one JSON document on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Flags of the training steps.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Examples per step.
    #[arg(long, default_value_t = NonZeroUsize::new(128).expect("non-zero"))]
    pub batch_size: NonZeroUsize,
    /// Momentum (SGD).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerName::Sgd)]
    pub optimizer: OptimizerName,
    /// L2 weight decay (trainable tensors only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
}

/// Flags of the refine step.
#[derive(Args, Debug, Clone)]
pub struct HeadArgs {
    /// Refine epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// First base layer to fine-tune too (conv1, conv2, representation) [default: none, only the
    /// head trains].
    #[arg(long)]
    pub train_from: Option<String>,
    /// Learning rate for the fine-tuned base layers [default: --lr].
    #[arg(long)]
    pub base_lr: Option<f64>,
    /// How the frozen part's outputs are obtained.
    #[arg(long, value_enum, default_value_t = CacheChoice::Memory)]
    pub feature_cache: CacheChoice,
    /// Precision of the frozen part's forward; the frozen tensors themselves stay float32.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    pub precision: PrecisionChoice,
    /// Print the freeze report (each tensor frozen or trained, in the optimizer or not, state
    /// bytes) and exit without training.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Learning rate of the head (the seed's 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Learning rate of pretraining.
    #[arg(long, default_value_t = 0.1)]
    pub pretrain_lr: f64,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Output folder [default: runs/<dataset>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this base instead of pretraining one.
    #[arg(long, conflicts_with = "random_base")]
    pub base: Option<PathBuf>,
    /// Pretraining epochs when no base is given.
    #[arg(long, default_value_t = 2)]
    pub pretrain_epochs: usize,
    /// Freeze an untrained, randomly initialised base (the seed's own scenario).
    #[arg(long)]
    pub random_base: bool,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Pretraining epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Output folder; the base goes to OUT/base.safetensors [default: runs/<dataset>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RefineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Learning rate of the head (the seed's 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[command(flatten)]
    pub head: HeadArgs,
    /// The frozen base.
    #[arg(long)]
    pub base: PathBuf,
    /// Output folder; the head goes to OUT/head.safetensors [default: runs/<dataset>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The base.
    #[arg(long)]
    pub base: PathBuf,
    /// A head; without it the base's own classifier is evaluated.
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// Accept a head trained on another base.
    #[arg(long)]
    pub allow_other_base: bool,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The base.
    #[arg(long)]
    pub base: PathBuf,
    /// The head.
    #[arg(long)]
    pub head: PathBuf,
    /// Accept a head trained on another base.
    #[arg(long)]
    pub allow_other_base: bool,
    /// Invert PNG/JPEG pixels (for dark digits on a light background).
    #[arg(long)]
    pub invert: bool,
    /// IDX image files, PNG or JPEG files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A checkpoint written by refine-cli.
    pub file: PathBuf,
    /// Also print the 5x5 top-left slices of the representation and final kernels, as the seed did.
    #[arg(long)]
    pub show_weights: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Timed runs of each phase, after one warm-up run.
    #[arg(long, default_value_t = NonZeroUsize::new(3).expect("non-zero"))]
    pub repeat: NonZeroUsize,
    /// Examples per training step.
    #[arg(long, default_value_t = NonZeroUsize::new(128).expect("non-zero"))]
    pub batch_size: NonZeroUsize,
    /// Output folder for bench.json and bench.md [default: runs/bench].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A Python with torch installed: also run benches/reference/torch_reference.py (PyTorch
    /// eager) with it and print the ratio of each phase.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// A Python with jax installed: also run benches/reference/jax_reference.py (jitted XLA) with
    /// it and print the ratio of each phase.
    #[arg(long)]
    pub jax_reference: Option<PathBuf>,
}
