//! Safetensors checkpoints: atomic writes, strict loads, metadata that binds a head to its base.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::fingerprint::tensor_bytes;

/// Metadata key holding the checkpoint's kind (`base`, `head`, `state`, `features`).
pub const KIND_KEY: &str = "refine.kind";

/// Named tensors and string metadata, as stored in a safetensors file.
pub struct Checkpoint {
    /// The tensors, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// The metadata (`__metadata__` of the file).
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// The metadata value for `key`, if any.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Fails unless the checkpoint's kind is `expected`.
    pub fn expect_kind(&self, path: &Path, expected: &'static str) -> Result<()> {
        match self.meta(KIND_KEY) {
            Some(kind) if kind == expected => Ok(()),
            found => Err(Error::CheckpointKind {
                path: path.to_path_buf(),
                expected,
                found: found.unwrap_or("foreign (no refine.kind)").to_owned(),
            }),
        }
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, tensor)| tensor)
    }
}

/// Writes tensors and metadata to `path` through a temporary file that is flushed and renamed,
/// so an interrupted write never leaves a torn checkpoint.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let dtype = match tensor.kind() {
                Kind::Int64 => Dtype::I64,
                Kind::BFloat16 => Dtype::BF16,
                _ => Dtype::F32,
            };
            let tensor = if dtype == Dtype::F32 {
                tensor.to_kind(Kind::Float)
            } else {
                tensor.shallow_clone()
            };
            let shape = tensor.size().iter().map(|&dim| dim as usize).collect();
            (name.clone(), dtype, shape, tensor_bytes(&tensor))
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    let serialized = safetensors::serialize(views, Some(metadata)).map_err(|error| {
        Error::BadCheckpoint { path: path.to_path_buf(), reason: error.to_string() }
    })?;
    write_atomic(path, &serialized)
}

/// Writes `bytes` to `path` via a flushed temporary file in the same folder and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(Error::io(path))
}

/// Reads a safetensors file onto `device`. Anything that is not a well-formed safetensors file
/// (truncated, foreign bytes, unsupported dtypes) is [`Error::BadCheckpoint`].
pub fn load(path: &Path, device: Device) -> Result<Checkpoint> {
    let bytes = fs::read(path).map_err(Error::io(path))?;
    let bad = |reason: String| Error::BadCheckpoint { path: path.to_path_buf(), reason };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|error| bad(error.to_string()))?;
    let metadata: BTreeMap<String, String> =
        header.metadata().clone().unwrap_or_default().into_iter().collect();
    let file = SafeTensors::deserialize(&bytes).map_err(|error| bad(error.to_string()))?;
    let mut tensors = Vec::new();
    let mut entries = file.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in entries {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::I64 => Kind::Int64,
            Dtype::BF16 => Kind::BFloat16,
            other => return Err(bad(format!("tensor {name:?} has unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&dim| dim as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?.to_device(device);
        tensors.push((name, tensor));
    }
    Ok(Checkpoint { tensors, metadata })
}

/// Copies a checkpoint's tensors into `store`, strictly: every variable of the store must be in
/// the checkpoint with the same shape, and the checkpoint may hold nothing else.
pub fn load_into_store(checkpoint: &Checkpoint, path: &Path, store: &VarStore) -> Result<()> {
    let variables = store.variables();
    for (name, _) in &checkpoint.tensors {
        if !variables.contains_key(name) {
            return Err(Error::UnexpectedTensor { path: path.to_path_buf(), name: name.clone() });
        }
    }
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    for name in names {
        let variable = &variables[name];
        let Some(tensor) = checkpoint.tensor(name) else {
            return Err(Error::MissingTensor { path: path.to_path_buf(), name: name.clone() });
        };
        if tensor.size() != variable.size() {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: variable.size(),
                found: tensor.size(),
            });
        }
        let mut variable = variable.shallow_clone();
        tch::no_grad(|| variable.f_copy_(tensor))?;
    }
    Ok(())
}

/// The store's variables as sorted `(name, tensor)` pairs.
pub fn named_variables(store: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}
