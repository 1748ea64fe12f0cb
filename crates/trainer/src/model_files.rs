//! Base and head checkpoint files, with the metadata that binds a head to its base.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Device;
use tch::nn::VarStore;

use models::{BaseCnn, HeadConfig, RefineHead};

use crate::checkpoint::{self, KIND_KEY, load_into_store, named_variables};
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprints;

/// Metadata key of a saved base's [`BaseCnn::ARCHITECTURE`].
const ARCHITECTURE_KEY: &str = "architecture";

/// The combined fingerprint of every variable in `store`.
pub fn store_fingerprint(store: &VarStore) -> String {
    let variables = named_variables(store);
    Fingerprints::of(variables.iter().map(|(name, tensor)| (name.as_str(), tensor))).combined
}

/// Saves a base's variables to `path` (atomically); returns its fingerprint.
pub fn save_base(path: &Path, store: &VarStore) -> Result<String> {
    let fingerprint = store_fingerprint(store);
    let metadata = BTreeMap::from([
        (KIND_KEY.to_owned(), "base".to_owned()),
        (ARCHITECTURE_KEY.to_owned(), BaseCnn::ARCHITECTURE.to_owned()),
        ("fingerprint".to_owned(), fingerprint.clone()),
    ]);
    checkpoint::save(path, &named_variables(store), metadata)?;
    Ok(fingerprint)
}

/// Loads a [`BaseCnn`] from `path`, strictly; its class count comes from `classifier.bias`.
/// A base saved for another [`BaseCnn::ARCHITECTURE`] is refused. The base comes back frozen.
pub fn load_base(path: &Path, device: Device) -> Result<(VarStore, BaseCnn)> {
    let saved = checkpoint::load(path, device)?;
    saved.expect_kind(path, "base")?;
    match saved.meta(ARCHITECTURE_KEY) {
        Some(architecture) if architecture == BaseCnn::ARCHITECTURE => {}
        found => {
            return Err(Error::Architecture {
                path: path.to_path_buf(),
                expected: BaseCnn::ARCHITECTURE,
                found: found.unwrap_or("base-cnn/1 (recorded none)").to_owned(),
            });
        }
    }
    let n_classes =
        saved.tensor("classifier.bias").map(|bias| bias.size()[0]).ok_or_else(|| {
            Error::MissingTensor { path: path.to_path_buf(), name: "classifier.bias".to_owned() }
        })?;
    let mut store = VarStore::new(device);
    let base = BaseCnn::new(&store.root(), n_classes);
    load_into_store(&saved, path, &store)?;
    store.freeze();
    Ok((store, base))
}

/// What a head file records about how it was trained.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeadBinding {
    /// Fingerprint of the base it was trained on (see [`store_fingerprint`]).
    pub base_fingerprint: String,
    /// The first trained base stage, if any.
    pub train_from: Option<String>,
    /// The head's sizes.
    #[serde(skip)]
    pub config: HeadConfig,
}

/// Saves a head's variables and its binding to `path` (atomically).
pub fn save_head(path: &Path, store: &VarStore, binding: &HeadBinding) -> Result<()> {
    let config = binding.config;
    let metadata = BTreeMap::from([
        (KIND_KEY.to_owned(), "head".to_owned()),
        ("base_fingerprint".to_owned(), binding.base_fingerprint.clone()),
        ("train_from".to_owned(), binding.train_from.clone().unwrap_or_default()),
        ("input_dim".to_owned(), config.input_dim.to_string()),
        ("hidden_dim".to_owned(), config.hidden_dim.to_string()),
        ("n_classes".to_owned(), config.n_classes.to_string()),
    ]);
    checkpoint::save(path, &named_variables(store), metadata)
}

/// Loads a head from `path`, strictly. Unless `allow_other_base`, a head bound to a base other
/// than `base_fingerprint` is refused with [`Error::BaseMismatch`].
pub fn load_head(
    path: &Path,
    device: Device,
    base_fingerprint: &str,
    allow_other_base: bool,
) -> Result<(VarStore, RefineHead, HeadBinding)> {
    let saved = checkpoint::load(path, device)?;
    saved.expect_kind(path, "head")?;
    let number =
        |key: &str, default: i64| saved.meta(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    let defaults = HeadConfig::default();
    let config = HeadConfig {
        input_dim: number("input_dim", defaults.input_dim),
        hidden_dim: number("hidden_dim", defaults.hidden_dim),
        n_classes: number("n_classes", defaults.n_classes),
    };
    let binding = HeadBinding {
        base_fingerprint: saved.meta("base_fingerprint").unwrap_or_default().to_owned(),
        train_from: saved.meta("train_from").filter(|name| !name.is_empty()).map(str::to_owned),
        config,
    };
    if !allow_other_base && binding.base_fingerprint != base_fingerprint {
        return Err(Error::BaseMismatch {
            path: path.to_path_buf(),
            expected: binding.base_fingerprint,
            found: base_fingerprint.to_owned(),
        });
    }
    let mut store = VarStore::new(device);
    let head = RefineHead::new(&store.root(), config);
    load_into_store(&saved, path, &store)?;
    store.freeze();
    Ok((store, head, binding))
}
