//! SHA-256 fingerprints of tensors and datasets.
//!
//! A tensor's fingerprint covers its name, dtype, shape and bytes (little-endian, contiguous);
//! a set's combined fingerprint hashes the per-tensor fingerprints in name order. Two runs agree
//! on a fingerprint exactly when every tensor is bit-for-bit identical.

use std::collections::BTreeMap;

use mnist_io::Dataset;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

/// Fingerprints of named tensors, and their combination.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprints {
    /// Per tensor, by name.
    pub tensors: BTreeMap<String, String>,
    /// The combination of all of them.
    pub combined: String,
}

impl Fingerprints {
    /// Fingerprints `tensors` (name, tensor).
    pub fn of<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Self {
        let tensors: BTreeMap<String, String> = tensors
            .into_iter()
            .map(|(name, tensor)| (name.to_owned(), tensor_hex(name, tensor)))
            .collect();
        let mut hasher = Sha256::new();
        for (name, digest) in &tensors {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(digest.as_bytes());
        }
        Fingerprints { tensors, combined: hex(&hasher.finalize()) }
    }

    /// The names whose fingerprints differ between `self` and `other` (or exist in one only).
    pub fn changed(&self, other: &Fingerprints) -> Vec<String> {
        let mut names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(name, digest)| other.tensors.get(*name) != Some(*digest))
            .map(|(name, _)| name.clone())
            .collect();
        names
            .extend(other.tensors.keys().filter(|name| !self.tensors.contains_key(*name)).cloned());
        names
    }
}

/// The fingerprint of one named tensor.
pub fn tensor_hex(name: &str, tensor: &Tensor) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(format!("{:?}", tensor.kind()).as_bytes());
    hasher.update([0]);
    for dim in tensor.size() {
        hasher.update(dim.to_le_bytes());
    }
    hasher.update(tensor_bytes(tensor));
    hex(&hasher.finalize())
}

/// A tensor's raw bytes: contiguous, on the CPU, in its own dtype.
pub(crate) fn tensor_bytes(tensor: &Tensor) -> Vec<u8> {
    let tensor = tensor.to_device(Device::Cpu).contiguous();
    let numel = tensor.numel();
    let element_size = tensor.kind().elt_size_in_bytes();
    let mut bytes = vec![0u8; numel * element_size];
    tensor.copy_data_u8(&mut bytes, numel);
    bytes
}

/// The SHA-256 of a dataset's images, labels and class count.
pub fn dataset_hex(dataset: &Dataset) -> String {
    let mut hasher = Sha256::new();
    let images = dataset.images();
    for value in [images.count(), images.rows(), images.cols(), dataset.n_classes()] {
        hasher.update((value as u64).to_le_bytes());
    }
    hasher.update(images.pixels());
    hasher.update(dataset.labels());
    hex(&hasher.finalize())
}

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
