//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong training, evaluating or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dataset problem from `mnist-io`.
    #[error(transparent)]
    Data(#[from] mnist_io::Error),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step} (learning rate {lr})\nhint: lower the learning rate"
    )]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The loss value.
        loss: f64,
        /// The learning rate in use.
        lr: f64,
    },
    /// Training was asked for on a dataset with no examples.
    #[error("cannot train on an empty dataset")]
    EmptyDataset,
    /// Fewer training examples than one batch: with the last short batch dropped, no step
    /// would ever run.
    #[error(
        "the training set has {examples} examples, fewer than one batch of {batch_size}\nhint: lower --batch-size"
    )]
    BatchLargerThanDataset {
        /// Training examples.
        examples: usize,
        /// The batch size.
        batch_size: usize,
    },
    /// Images of a size the model cannot take.
    #[error("the model needs {expected}x{expected} images, the dataset has {rows}x{cols}")]
    ImageSize {
        /// The side the model needs.
        expected: i64,
        /// Rows found.
        rows: usize,
        /// Columns found.
        cols: usize,
    },
    /// The base cannot make a lower-precision copy of itself.
    #[error("this base cannot run its frozen part at {precision} precision")]
    PrecisionUnsupported {
        /// The precision asked for.
        precision: String,
    },
    /// The named split point is no stage of the base.
    #[error("unknown layer {name:?} for the split point; the base's trainable layers are: {}", known.join(", "))]
    UnknownStage {
        /// The name given.
        name: String,
        /// The stages the base has.
        known: Vec<String>,
    },
    /// A file that is not a valid safetensors checkpoint.
    #[error("{}: not a valid safetensors checkpoint: {reason}", path.display())]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint of another kind (a head where a base is expected, ...).
    #[error("{}: is a {found} checkpoint, expected a {expected} checkpoint", path.display())]
    CheckpointKind {
        /// The file.
        path: PathBuf,
        /// Kind expected.
        expected: &'static str,
        /// Kind found.
        found: String,
    },
    /// A base saved for another architecture revision: the same weights would compute
    /// something else here.
    #[error(
        "{}: this base was saved for architecture {found:?}, but this build computes {expected:?}; \
         pretrain a new base (refine-cli pretrain)",
        path.display()
    )]
    Architecture {
        /// The file.
        path: PathBuf,
        /// This build's architecture.
        expected: &'static str,
        /// The file's (or a note that it records none).
        found: String,
    },
    /// A tensor the model has but the checkpoint lacks.
    #[error("{}: missing tensor {name:?}", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor the checkpoint has but the model does not.
    #[error("{}: unexpected tensor {name:?} (the model has no such parameter)", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor whose shape differs from the model's.
    #[error("{}: tensor {name:?} has shape {found:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The model's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// A head trained on another base.
    #[error(
        "{}: this head was trained on base {expected}, but the base given is {found}\nhint: pass the base it was trained with, or override the check if you know they match",
        path.display()
    )]
    BaseMismatch {
        /// The head file.
        path: PathBuf,
        /// The base fingerprint recorded in the head.
        expected: String,
        /// The fingerprint of the base given.
        found: String,
    },
    /// The frozen tensors changed during training: the promise this crate exists for is broken.
    #[error("frozen tensors changed during training: {}", names.join(", "))]
    FrozenTensorsChanged {
        /// The tensors whose fingerprint changed.
        names: Vec<String>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io { path: path.to_path_buf(), source }
    }
}
