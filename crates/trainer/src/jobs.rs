//! The two jobs: pretraining the whole base, and refining the head over the frozen base.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mnist_io::Dataset;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use models::{RefineHead, StagedBase};

use crate::checkpoint::named_variables;
use crate::cpu_head::{CpuHeadSteps, HeadInputs};
use crate::error::{Error, Result};
use crate::features::{self, FeatureCache, Precision};
use crate::fingerprint::Fingerprints;
use crate::fit::{
    AutogradSteps, EpochMetrics, Evaluation, Event, FitConfig, Inputs, evaluate, train_epochs,
};
use crate::freeze::{FreezePlan, is_trainable, split_index};
use crate::optim::Optimizer;
use crate::state::RunState;
use crate::tensors::{check_images, images_to_tensor, labels_to_tensor};

/// What [`pretrain`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainReport {
    /// Per-epoch metrics (including epochs restored from a saved state).
    pub epochs: Vec<EpochMetrics>,
    /// Epochs that were restored rather than run.
    pub resumed_epochs: usize,
    /// The base on the test set afterwards.
    pub evaluation: Evaluation,
    /// Seconds spent training (this process only).
    pub train_s: f64,
}

/// Trains every tensor of the base (its classifier included) on `train`, evaluating on `test`.
/// With `state_dir`, each finished epoch is saved there and a rerun resumes from it.
pub fn pretrain(
    base: &dyn StagedBase,
    base_store: &mut VarStore,
    train: &Dataset,
    test: &Dataset,
    config: &FitConfig,
    state_dir: Option<&Path>,
    events: &mut dyn FnMut(Event),
) -> Result<PretrainReport> {
    check_images(train, models::IMAGE_SIDE)?;
    check_images(test, models::IMAGE_SIDE)?;
    base_store.unfreeze();
    let params = named_variables(base_store);
    let mut optimizer = Optimizer::new(vec![(
        config.optimizer,
        params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    )]);
    let stages = base.stage_names().len();
    let forward =
        |xs: &Tensor, train: bool| base.classify(&base.forward_stages(xs, 0..stages, train));
    let device = config.device;
    let (train_images, test_images) =
        (images_to_tensor(train, device), images_to_tensor(test, device));
    let (train_labels, test_labels) =
        (labels_to_tensor(train, device), labels_to_tensor(test, device));
    let data = Inputs {
        train: &train_images,
        train_labels: &train_labels,
        test: &test_images,
        test_labels: &test_labels,
        n_classes: test.n_classes(),
    };
    let state = state_dir.map(|dir| {
        RunState::new(
            dir,
            "pretrain",
            run_key("pretrain", config, &[base.architecture(), &train.len().to_string()]),
        )
    });
    let started = Instant::now();
    let (epochs, resumed_epochs) = train_resumable(
        &data,
        &forward,
        &mut optimizer,
        &params,
        config,
        "pretrain",
        state.as_ref(),
        events,
        None,
    )?;
    let train_s = started.elapsed().as_secs_f64();
    let evaluation = evaluate(&test_images, &test_labels, &forward, test.n_classes(), device);
    base_store.freeze();
    Ok(PretrainReport { epochs, resumed_epochs, evaluation, train_s })
}

/// Options of [`refine`] beyond the shared [`FitConfig`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefineConfig {
    /// Epochs, batch size, optimizer, seed, device.
    pub fit: FitConfig,
    /// The first base stage to train too (`None`: only the head trains, as in the seed).
    pub train_from: Option<String>,
    /// Learning rate for the trainable base stages (`None`: the head's).
    pub base_lr: Option<f64>,
    /// How the frozen part's outputs are obtained.
    pub feature_cache: FeatureCache,
    /// The precision of the frozen part's forward.
    pub precision: Precision,
    /// Where per-epoch state goes, so a killed run resumes (`None`: no resume).
    pub state_dir: Option<PathBuf>,
}

/// What [`refine`] did, with the proof that the frozen part did not move.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefineReport {
    /// Every tensor's role.
    pub freeze: FreezePlan,
    /// Per-epoch metrics (including epochs restored from a saved state).
    pub epochs: Vec<EpochMetrics>,
    /// Epochs that were restored rather than run.
    pub resumed_epochs: usize,
    /// Base and head on the test set afterwards.
    pub evaluation: Evaluation,
    /// Combined fingerprint of the frozen tensors before training.
    pub base_fingerprint_before: String,
    /// The same after training.
    pub base_fingerprint_after: String,
    /// Whether every frozen tensor is bit-identical afterwards (always true in a returned
    /// report: a change is an error).
    pub base_unchanged: bool,
    /// Fingerprint of the whole base afterwards, which the head is bound to.
    pub base_fingerprint: String,
    /// Whether the head's tensors changed.
    pub head_changed: bool,
    /// Whether the cached features came from disk.
    pub features_from_disk: bool,
    /// Seconds extracting features (0 when loaded from disk or with the cache off).
    pub extract_s: f64,
    /// Seconds training (this process only).
    pub refine_s: f64,
    /// Seconds of the final evaluation.
    pub eval_s: f64,
}

/// Trains `head` (and the base stages from `config.train_from` on) over the frozen rest of
/// `base`. The frozen tensors are `freeze()`d, run only without gradients in eval mode, never
/// handed to the optimizer, and fingerprinted before and after: if any changed, this returns
/// [`Error::FrozenTensorsChanged`].
#[allow(clippy::too_many_arguments)]
pub fn refine(
    base: &dyn StagedBase,
    base_store: &mut VarStore,
    head: &RefineHead,
    head_store: &VarStore,
    train: &Dataset,
    test: &Dataset,
    config: &RefineConfig,
    events: &mut dyn FnMut(Event),
) -> Result<RefineReport> {
    check_images(train, models::IMAGE_SIDE)?;
    check_images(test, models::IMAGE_SIDE)?;
    let split = split_index(base, config.train_from.as_deref())?;
    let stages = base.stage_names().len();
    let device = config.fit.device;

    base_store.freeze();
    let (mut frozen, mut base_trainable) = (Vec::new(), Vec::new());
    for (name, tensor) in named_variables(base_store) {
        if is_trainable(base, split, &name) {
            base_trainable.push((name, tensor.set_requires_grad(true)));
        } else {
            frozen.push((name, tensor));
        }
    }
    let fingerprint = |tensors: &[(String, Tensor)]| {
        Fingerprints::of(tensors.iter().map(|(n, t)| (n.as_str(), t)))
    };
    let frozen_before = fingerprint(&frozen);
    let head_params = named_variables(head_store);
    let head_before = fingerprint(&head_params);

    let mut groups = vec![(
        config.fit.optimizer,
        head_params
            .iter()
            .map(|(n, t)| (format!("head.{n}"), t.shallow_clone()))
            .collect::<Vec<_>>(),
    )];
    if !base_trainable.is_empty() {
        let rule =
            config.base_lr.map_or(config.fit.optimizer, |lr| config.fit.optimizer.with_lr(lr));
        groups.push((
            rule,
            base_trainable.iter().map(|(n, t)| (format!("base.{n}"), t.shallow_clone())).collect(),
        ));
    }
    let mut optimizer = Optimizer::new(groups);
    let all_params: Vec<(String, Tensor)> = head_params
        .iter()
        .map(|(n, t)| (format!("head.{n}"), t.shallow_clone()))
        .chain(base_trainable.iter().map(|(n, t)| (format!("base.{n}"), t.shallow_clone())))
        .collect();

    // The frozen part's outputs: cached once, or recomputed per batch (naive); at lower
    // precision through a converted copy, so the frozen tensors themselves stay untouched.
    let low_precision = match config.precision {
        Precision::F32 => None,
        precision => Some(
            base.inference_copy(precision.kind())
                .ok_or(Error::PrecisionUnsupported { precision: format!("{precision:?}") })?,
        ),
    };
    let frozen_part: &dyn StagedBase = low_precision.as_deref().unwrap_or(base);
    let kind = config.precision.kind();
    let extract_started = Instant::now();
    let (train_images, test_images) =
        (images_to_tensor(train, device), images_to_tensor(test, device));
    let mut features_from_disk = false;
    let (train_inputs, test_inputs, naive) = match &config.feature_cache {
        FeatureCache::Off => (train_images, test_images, true),
        FeatureCache::Memory => {
            let train_features =
                features::extract(frozen_part, split, &train_images, kind, device, events);
            let test_features =
                features::extract(frozen_part, split, &test_images, kind, device, events);
            (train_features, test_features, false)
        }
        FeatureCache::Disk(dir) => {
            let path = features::cache_path(
                dir,
                base.architecture(),
                &frozen_before.combined,
                train,
                test,
                split,
                config.precision,
            );
            if let Some((train_features, test_features)) = features::load_cached(&path, device) {
                features_from_disk = true;
                tracing::info!(path = %path.display(), "features loaded from the disk cache");
                (train_features, test_features, false)
            } else {
                let train_features =
                    features::extract(frozen_part, split, &train_images, kind, device, events);
                let test_features =
                    features::extract(frozen_part, split, &test_images, kind, device, events);
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
                features::store(&path, &train_features, &test_features)?;
                (train_features, test_features, false)
            }
        }
    };
    let extract_s =
        if naive || features_from_disk { 0.0 } else { extract_started.elapsed().as_secs_f64() };
    let (train_labels, test_labels) =
        (labels_to_tensor(train, device), labels_to_tensor(test, device));

    let frozen_forward = |xs: &Tensor| {
        tch::no_grad(|| {
            frozen_part.forward_stages(&xs.to_kind(kind), 0..split, false).to_kind(Kind::Float)
        })
    };
    let forward = |xs: &Tensor, train_mode: bool| {
        let features = if naive { frozen_forward(xs) } else { xs.shallow_clone() };
        head.forward(&base.forward_stages(&features, split..stages, train_mode))
    };
    let data = Inputs {
        train: &train_inputs,
        train_labels: &train_labels,
        test: &test_inputs,
        test_labels: &test_labels,
        n_classes: test.n_classes(),
    };
    let key_parts = [
        base.architecture(),
        frozen_before.combined.as_str(),
        &split.to_string(),
        &naive.to_string(),
        &format!("{:?}", config.base_lr),
        &format!("{:?}", config.precision),
    ];
    let state = config
        .state_dir
        .as_deref()
        .map(|dir| RunState::new(dir, "refine", run_key("refine", &config.fit, &key_parts)));
    let refine_started = Instant::now();
    // With only the head training on the CPU, its own step replaces autograd (see `cpu_head`).
    let cpu_head = if device != Device::Cpu || !base_trainable.is_empty() {
        None
    } else if naive {
        Some(HeadInputs::PerBatch { images: &train_inputs, frozen: &frozen_forward })
    } else {
        Vec::<f32>::try_from(train_inputs.contiguous().view(-1)).ok().map(HeadInputs::Cached)
    }
    .map(|inputs| (inputs, &train_labels));
    let (epochs, resumed_epochs) = train_resumable(
        &data,
        &forward,
        &mut optimizer,
        &all_params,
        &config.fit,
        "refine",
        state.as_ref(),
        events,
        cpu_head,
    )?;
    let refine_s = refine_started.elapsed().as_secs_f64();

    let eval_started = Instant::now();
    let evaluation = evaluate(&test_inputs, &test_labels, &forward, test.n_classes(), device);
    let eval_s = eval_started.elapsed().as_secs_f64();

    for (_, tensor) in &base_trainable {
        let _ = tensor.set_requires_grad(false);
    }
    let frozen_after = fingerprint(&frozen);
    let changed = frozen_before.changed(&frozen_after);
    if !changed.is_empty() {
        return Err(Error::FrozenTensorsChanged { names: changed });
    }
    let head_after = fingerprint(&head_params);
    let freeze = FreezePlan::new(base, base_store, head_store, split, config.fit.optimizer);
    Ok(RefineReport {
        freeze,
        epochs,
        resumed_epochs,
        evaluation,
        base_fingerprint_before: frozen_before.combined,
        base_fingerprint_after: frozen_after.combined,
        base_unchanged: true,
        base_fingerprint: fingerprint(&named_variables(base_store)).combined,
        head_changed: head_before.combined != head_after.combined,
        features_from_disk,
        extract_s,
        refine_s,
        eval_s,
    })
}

/// Evaluates base stages followed by `head` on `dataset`, without gradients.
pub fn evaluate_head(
    base: &dyn StagedBase,
    head: &RefineHead,
    dataset: &Dataset,
    device: tch::Device,
) -> Result<Evaluation> {
    let stages = base.stage_names().len();
    evaluate_images(dataset, device, &|xs, _| {
        head.forward(&base.forward_stages(xs, 0..stages, false))
    })
}

/// Evaluates the base with its own classifier on `dataset`, without gradients.
pub fn evaluate_base(
    base: &dyn StagedBase,
    dataset: &Dataset,
    device: tch::Device,
) -> Result<Evaluation> {
    let stages = base.stage_names().len();
    evaluate_images(dataset, device, &|xs, _| {
        base.classify(&base.forward_stages(xs, 0..stages, false))
    })
}

/// Checks `dataset`'s images and evaluates `forward` on them.
fn evaluate_images(
    dataset: &Dataset,
    device: tch::Device,
    forward: &crate::fit::Forward<'_>,
) -> Result<Evaluation> {
    check_images(dataset, models::IMAGE_SIDE)?;
    Ok(evaluate(
        &images_to_tensor(dataset, device),
        &labels_to_tensor(dataset, device),
        forward,
        dataset.n_classes(),
        device,
    ))
}

/// Class probabilities of base + head for images `[N, 1, 28, 28]` in `[0, 1]`.
///
/// # Shapes
/// `[N, 1, 28, 28]` → `[N, n_classes]`.
pub fn predict(base: &dyn StagedBase, head: &RefineHead, images: &Tensor) -> Tensor {
    let stages = base.stage_names().len();
    tch::no_grad(|| head.forward(&base.forward_stages(images, 0..stages, false)).exp())
}

/// Restores a matching saved state (and says so through `events`), then trains up to
/// `config.epochs`, saving the state after every epoch. Returns all epochs' metrics and how many
/// were restored. With `cpu_head` (the head's training inputs and labels), the head's own CPU
/// step trains when it applies (see [`CpuHeadSteps::new`]); otherwise autograd does.
#[allow(clippy::too_many_arguments)]
fn train_resumable(
    data: &Inputs<'_>,
    forward: &crate::fit::Forward<'_>,
    optimizer: &mut Optimizer,
    params: &[(String, Tensor)],
    config: &FitConfig,
    phase: &str,
    state: Option<&RunState>,
    events: &mut dyn FnMut(Event),
    cpu_head: Option<(HeadInputs<'_>, &Tensor)>,
) -> Result<(Vec<EpochMetrics>, usize)> {
    let restored = match state {
        Some(state) => state.restore(params, optimizer, config.device, config.epochs)?,
        None => Vec::new(),
    };
    let resumed_epochs = restored.len();
    if resumed_epochs > 0 {
        events(Event::Resumed { epochs: restored.clone() });
    }
    let mut save = |metrics: &[EpochMetrics], optimizer: &Optimizer| match state {
        Some(state) => state.save(params, optimizer, metrics),
        None => Ok(()),
    };
    let cpu_head = cpu_head.and_then(|(inputs, labels)| {
        let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
        CpuHeadSteps::new(&mut *optimizer, config.optimizer, inputs, labels, threads)
    });
    let epochs = match cpu_head {
        Some(mut steps) => {
            train_epochs(data, forward, &mut steps, config, phase, restored, &mut save, events)?
        }
        None => {
            let mut steps = AutogradSteps { data, forward, optimizer, device: config.device };
            train_epochs(data, forward, &mut steps, config, phase, restored, &mut save, events)?
        }
    };
    Ok((epochs, resumed_epochs))
}

/// A key identifying a run's configuration for resuming: the phase, the fit settings except the
/// number of epochs (so a run can be extended), and `extra`.
fn run_key(phase: &str, config: &FitConfig, extra: &[&str]) -> String {
    let fit = FitConfig { epochs: 0, ..config.clone() };
    format!("{phase}|{}|{}", serde_json::to_string(&fit).unwrap_or_default(), extra.join("|"))
}
