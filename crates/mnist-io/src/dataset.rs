//! Validated datasets: images and labels that agree, and the operations that keep them so.

use std::path::{Path, PathBuf};

use crate::batch::shuffled_indices;
use crate::error::{Error, Result};
use crate::idx::{self, Kind};

/// The number of classes of MNIST and Fashion-MNIST.
pub const MNIST_CLASSES: usize = 10;

/// The standard file names of an MNIST-like folder: (train images, train labels, test images,
/// test labels). [`load_dir`] also accepts each with a `.gz` suffix.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// `count` grayscale images of `rows x cols` unsigned bytes, stored contiguously, row-major.
/// Pixels stay `u8`; the trainer converts them to floats as `value / 255`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pixels: Vec<u8>,
    count: usize,
    rows: usize,
    cols: usize,
}

impl Images {
    /// Wraps a pixel buffer, checking that it holds exactly `count * rows * cols` bytes.
    pub fn new(pixels: Vec<u8>, count: usize, rows: usize, cols: usize) -> Result<Self> {
        let expected = count.checked_mul(rows).and_then(|n| n.checked_mul(cols));
        if expected != Some(pixels.len()) {
            return Err(Error::ShapeMismatch {
                count,
                rows,
                cols,
                expected: expected.unwrap_or(usize::MAX),
                found: pixels.len(),
            });
        }
        Ok(Images { pixels, count, rows, cols })
    }

    /// Reads an IDX images file (3 dimensions, unsigned bytes, raw or gzip).
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_idx(idx::read_file(path, Kind::Images)?)
    }

    /// Parses IDX images from bytes (raw or gzip); `origin` names them in errors.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self> {
        Self::from_idx(idx::parse(bytes, origin, Kind::Images)?)
    }

    fn from_idx(array: idx::IdxArray) -> Result<Self> {
        let [count, rows, cols] = [0, 1, 2].map(|i| array.dims[i] as usize);
        Self::new(array.data, count, rows, cols)
    }

    /// Encodes the images as an IDX file's bytes.
    pub fn to_idx_bytes(&self) -> Result<Vec<u8>> {
        idx::encode(&[self.count, self.rows, self.cols], &self.pixels, Path::new("<images>"))
    }

    /// Writes the images as a raw IDX file (through a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = idx::encode(&[self.count, self.rows, self.cols], &self.pixels, path)?;
        idx::write_file(path, &bytes)
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Rows per image.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns per image.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per image (`rows * cols`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of image `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let len = self.image_len();
        self.pixels.get(index * len..(index + 1) * len)
    }

    fn select(&self, indices: &[usize]) -> Images {
        let len = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * len);
        for &index in indices {
            pixels.extend_from_slice(&self.pixels[index * len..(index + 1) * len]);
        }
        Images { pixels, count: indices.len(), rows: self.rows, cols: self.cols }
    }
}

/// Labels read from an IDX labels file (1 dimension, unsigned bytes, raw or gzip).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(idx::read_file(path, Kind::Labels)?.data)
}

/// Parses IDX labels from bytes (raw or gzip); `origin` names them in errors.
pub fn parse_labels(bytes: &[u8], origin: &Path) -> Result<Vec<u8>> {
    Ok(idx::parse(bytes, origin, Kind::Labels)?.data)
}

/// Encodes labels as an IDX file's bytes.
pub fn labels_to_idx_bytes(labels: &[u8]) -> Result<Vec<u8>> {
    idx::encode(&[labels.len()], labels, Path::new("<labels>"))
}

/// Writes labels as a raw IDX file (through a temporary file renamed into place).
pub fn write_labels(path: &Path, labels: &[u8]) -> Result<()> {
    idx::write_file(path, &idx::encode(&[labels.len()], labels, path)?)
}

/// Images with one label each, every label below `n_classes`.
///
/// An empty dataset (0 examples) is valid: it loads, splits and batches (into no batches); the
/// trainer refuses to train on one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    images: Images,
    labels: Vec<u8>,
    n_classes: usize,
}

impl Dataset {
    /// Pairs images with labels, checking the counts and that every label is below `n_classes`
    /// (1 to 256).
    pub fn new(images: Images, labels: Vec<u8>, n_classes: usize) -> Result<Self> {
        Self::checked(images, labels, n_classes, Path::new("<images>"), Path::new("<labels>"))
    }

    fn checked(
        images: Images,
        labels: Vec<u8>,
        n_classes: usize,
        images_path: &Path,
        labels_path: &Path,
    ) -> Result<Self> {
        if !(1..=256).contains(&n_classes) {
            return Err(Error::ClassCount(n_classes));
        }
        if images.count() != labels.len() {
            return Err(Error::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: images.count(),
                labels_path: labels_path.to_path_buf(),
                labels: labels.len(),
            });
        }
        if let Some(index) = labels.iter().position(|&label| usize::from(label) >= n_classes) {
            return Err(Error::LabelOutOfRange {
                path: labels_path.to_path_buf(),
                index,
                label: labels[index],
                n_classes,
            });
        }
        Ok(Dataset { images, labels, n_classes })
    }

    /// Reads and validates an images file and its labels file (raw or gzip each).
    pub fn read(images_path: &Path, labels_path: &Path, n_classes: usize) -> Result<Self> {
        let images = Images::read(images_path)?;
        let labels = read_labels(labels_path)?;
        Self::checked(images, labels, n_classes, images_path, labels_path)
    }

    /// Writes the dataset as two raw IDX files.
    pub fn write(&self, images_path: &Path, labels_path: &Path) -> Result<()> {
        self.images.write(images_path)?;
        write_labels(labels_path, &self.labels)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The labels, one per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The number of classes; every label is below it.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// How many examples each class has, indexed by class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_classes];
        for &label in &self.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }

    /// The examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&index) = indices.iter().find(|&&index| index >= self.len()) {
            return Err(Error::IndexOutOfRange { index, len: self.len() });
        }
        Ok(self.select(indices))
    }

    fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.images.select(indices),
            labels: indices.iter().map(|&index| self.labels[index]).collect(),
            n_classes: self.n_classes,
        }
    }

    /// The examples whose label is in `classes`, in their original order. Labels and
    /// `n_classes` are kept as they are, so a model's outputs still mean the same classes.
    pub fn filter_classes(&self, classes: &[u8]) -> Dataset {
        let indices: Vec<usize> =
            (0..self.len()).filter(|&index| classes.contains(&self.labels[index])).collect();
        self.select(&indices)
    }

    /// The first `n` examples (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> Dataset {
        let indices: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&indices)
    }

    /// Splits off `validation` examples chosen by a seeded shuffle (see
    /// [`shuffled_indices`](crate::shuffled_indices)); returns `(train, validation)`, each in
    /// the shuffled order. The same seed gives the same split on every machine.
    pub fn split(&self, validation: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if validation > self.len() {
            return Err(Error::SplitTooLarge { requested: validation, len: self.len() });
        }
        let order = shuffled_indices(self.len(), seed);
        let (held_out, kept) = order.split_at(validation);
        Ok((self.select(kept), self.select(held_out)))
    }
}

/// The train and test sets of an MNIST-like folder.
#[derive(Clone, Debug)]
pub struct Splits {
    /// The training set.
    pub train: Dataset,
    /// The test set.
    pub test: Dataset,
}

/// Loads the four standard files ([`MNIST_FILES`], each raw or with `.gz`) from `dir`, with
/// [`MNIST_CLASSES`] classes.
pub fn load_dir(dir: &Path) -> Result<Splits> {
    let [train_images, train_labels, test_images, test_labels] =
        MNIST_FILES.map(|name| resolve(dir, name));
    Ok(Splits {
        train: Dataset::read(&train_images, &train_labels, MNIST_CLASSES)?,
        test: Dataset::read(&test_images, &test_labels, MNIST_CLASSES)?,
    })
}

/// `dir/name`, or `dir/name.gz` when only the compressed file exists.
fn resolve(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if !raw.exists() && gz.exists() { gz } else { raw }
}
