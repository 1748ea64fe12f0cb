//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, validating or slicing a dataset. Each variant names the
/// file (where there is one) and the numbers involved, expected against found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file does not exist.
    #[error("{}: no such file\nhint: run `cargo xtask fetch-data` to download the dataset", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("{}: is a directory, not an IDX file", path.display())]
    IsDirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// Any other I/O failure while reading or writing.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The gzip stream is truncated or corrupt.
    #[error("{}: corrupt or truncated gzip stream: {source}", path.display())]
    Gzip {
        /// The compressed file.
        path: PathBuf,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The file ends inside the header.
    #[error("{}: truncated header: needs {expected} bytes, found {found}", path.display())]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Header bytes needed.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The first two bytes of the magic number are not zero.
    #[error("{}: not an IDX file: magic number starts {found:02x?}, expected [00, 00]", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first two bytes found.
        found: [u8; 2],
    },
    /// A valid IDX type code other than unsigned bytes.
    #[error("{}: IDX element type 0x{code:02x} ({name}) is not supported, only unsigned bytes (0x08)", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The type code found.
        code: u8,
        /// What that code means in the IDX format.
        name: &'static str,
    },
    /// A byte that is no IDX type code at all.
    #[error("{}: unknown IDX element type 0x{code:02x}", path.display())]
    UnknownType {
        /// The file.
        path: PathBuf,
        /// The byte found.
        code: u8,
    },
    /// Images need 3 dimensions and labels 1.
    #[error("{}: expected {expected} dimension(s) for {kind}, found {found}", path.display())]
    WrongDimensions {
        /// The file.
        path: PathBuf,
        /// `"images"` or `"labels"`.
        kind: &'static str,
        /// Dimensions expected.
        expected: u8,
        /// Dimensions declared.
        found: u8,
    },
    /// The data is shorter or longer than the header declares.
    #[error("{}: header declares {dims:?} = {expected} data bytes, but the file holds {found}", path.display())]
    DataLength {
        /// The file.
        path: PathBuf,
        /// The declared dimensions.
        dims: Vec<u32>,
        /// Data bytes the dimensions imply.
        expected: u64,
        /// Data bytes present (for `.gz`, one more than `expected` means "more than declared").
        found: u64,
    },
    /// Image and label counts differ.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Number of images.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not below the number of classes.
    #[error("{}: label {label} at index {index} is not below the number of classes ({n_classes})", path.display())]
    LabelOutOfRange {
        /// The labels file.
        path: PathBuf,
        /// Position of the first bad label.
        index: usize,
        /// The bad label.
        label: u8,
        /// The number of classes.
        n_classes: usize,
    },
    /// Pixel buffer and shape disagree when building [`Images`](crate::Images) by hand.
    #[error("{found} pixel bytes do not fill {count} images of {rows}x{cols} ({expected} bytes)")]
    ShapeMismatch {
        /// Images.
        count: usize,
        /// Rows per image.
        rows: usize,
        /// Columns per image.
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// An example index past the end.
    #[error("index {index} is out of range for a dataset of {len} examples")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// A validation split larger than the dataset.
    #[error("cannot hold out {requested} validation examples from a dataset of {len}")]
    SplitTooLarge {
        /// Examples requested for validation.
        requested: usize,
        /// The dataset's length.
        len: usize,
    },
    /// The number of classes must be between 1 and 256 (labels are bytes).
    #[error("the number of classes must be between 1 and 256, got {0}")]
    ClassCount(usize),
    /// A dimension too large for the IDX format (u32) when writing.
    #[error("{}: dimension {value} does not fit the IDX format's u32", path.display())]
    DimensionTooLarge {
        /// The file being written.
        path: PathBuf,
        /// The dimension.
        value: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
