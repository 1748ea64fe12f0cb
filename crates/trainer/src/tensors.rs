//! The one place where dataset bytes become tensors.

use mnist_io::Dataset;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Images as `[N, 1, rows, cols]` float32 in `[0, 1]` (`value / 255`, the seed's convention), on
/// `device`.
pub fn images_to_tensor(dataset: &Dataset, device: Device) -> Tensor {
    let images = dataset.images();
    let shape = [images.count() as i64, 1, images.rows() as i64, images.cols() as i64];
    Tensor::from_slice(images.pixels())
        .to_device(device)
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .reshape(shape)
}

/// Labels as an `[N]` int64 tensor on `device`.
pub fn labels_to_tensor(dataset: &Dataset, device: Device) -> Tensor {
    Tensor::from_slice(dataset.labels()).to_device(device).to_kind(Kind::Int64)
}

/// Checks that `dataset` holds `side x side` images and at least one example.
pub fn check_images(dataset: &Dataset, side: i64) -> Result<()> {
    if dataset.is_empty() {
        return Err(Error::EmptyDataset);
    }
    let (rows, cols) = (dataset.images().rows(), dataset.images().cols());
    if rows as i64 != side || cols as i64 != side {
        return Err(Error::ImageSize { expected: side, rows, cols });
    }
    Ok(())
}
