//! Trainer tests on small synthetic data (CPU): freezing, caching, resuming, checkpoints,
//! optimizers and a second kind of base.

use std::num::NonZeroUsize;
use std::ops::Range;

use mnist_io::{Dataset, Images, SplitMix64};
use models::{BaseCnn, HeadConfig, RefineHead, StagedBase};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use crate::*;

/// `n` 28x28 images of 4 classes: class `c` is a bright 8x8 square in quadrant `c`, on noise.
fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = SplitMix64::new(seed);
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = (rng.next_u64() % 4) as usize;
        let (top, left) = (3 + 14 * (class / 2), 3 + 14 * (class % 2));
        for row in 0..28 {
            for col in 0..28 {
                let inside = (top..top + 8).contains(&row) && (left..left + 8).contains(&col);
                let noise = (rng.next_u64() % 60) as u8;
                pixels.push(if inside { 190 + noise } else { noise });
            }
        }
        labels.push(class as u8);
    }
    Dataset::new(Images::new(pixels, n, 28, 28).unwrap(), labels, 4).unwrap()
}

fn fit(epochs: usize, lr: f64) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: NonZeroUsize::new(32).unwrap(),
        optimizer: OptimizerConfig::Sgd { lr, momentum: 0.9, weight_decay: 0.0 },
        seed: 7,
        device: Device::Cpu,
    }
}

fn refine_config(epochs: usize, cache: FeatureCache) -> RefineConfig {
    RefineConfig {
        fit: fit(epochs, 0.05),
        train_from: None,
        base_lr: None,
        feature_cache: cache,
        precision: Precision::F32,
        state_dir: None,
    }
}

/// libtorch's generator is global and tests run in parallel: seeding and drawing the initial
/// weights must happen under one lock, or another test's draws land in between.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A base and head with fixed initial weights (seeded).
fn models(seed: i64) -> (VarStore, BaseCnn, VarStore, RefineHead) {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed);
    let base_store = VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&base_store.root(), 4);
    let head_store = VarStore::new(Device::Cpu);
    let head =
        RefineHead::new(&head_store.root(), HeadConfig { n_classes: 4, ..HeadConfig::default() });
    (base_store, base, head_store, head)
}

/// Epoch metrics with the wall-clock time zeroed, for comparing runs.
fn without_time(epochs: &[EpochMetrics]) -> Vec<EpochMetrics> {
    epochs.iter().map(|epoch| EpochMetrics { seconds: 0.0, ..epoch.clone() }).collect()
}

fn snapshot(store: &VarStore) -> Vec<(String, Vec<u8>)> {
    checkpoint::named_variables(store)
        .into_iter()
        .map(|(name, tensor)| (name, fingerprint::tensor_bytes(&tensor)))
        .collect()
}

#[test]
fn refine_leaves_every_base_tensor_bit_identical_and_trains_the_head() {
    let (train, test) = (synthetic(256, 1), synthetic(64, 2));
    let (mut base_store, base, head_store, head) = models(3);
    let base_before = snapshot(&base_store);
    let head_before = snapshot(&head_store);
    let report = refine(
        &base,
        &mut base_store,
        &head,
        &head_store,
        &train,
        &test,
        &refine_config(3, FeatureCache::Memory),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(snapshot(&base_store), base_before, "a frozen tensor moved");
    let head_after = snapshot(&head_store);
    for ((name, before), (_, after)) in head_before.iter().zip(&head_after) {
        assert_ne!(before, after, "head tensor {name} did not change");
    }
    assert!(report.base_unchanged && report.head_changed);
    assert_eq!(report.base_fingerprint_before, report.base_fingerprint_after);
    assert_eq!(report.epochs.len(), 3);
    assert!(report.evaluation.accuracy > 0.9, "accuracy {}", report.evaluation.accuracy);
    let (frozen, _, trained, trained_elements) = report.freeze.counts();
    assert_eq!((frozen, trained, trained_elements), (8, 4, 256 * 64 + 64 + 64 * 4 + 4));
    assert!(
        report
            .freeze
            .tensors
            .iter()
            .filter(|t| !t.trained)
            .all(|t| !t.in_optimizer && t.optimizer_state_bytes == 0)
    );
}

#[test]
fn cached_and_naive_modes_agree() {
    let (train, test) = (synthetic(192, 4), synthetic(64, 5));
    let run = |cache| {
        let (mut base_store, base, head_store, head) = models(6);
        refine(
            &base,
            &mut base_store,
            &head,
            &head_store,
            &train,
            &test,
            &refine_config(2, cache),
            &mut |_| {},
        )
        .unwrap()
    };
    let (cached, naive) = (run(FeatureCache::Memory), run(FeatureCache::Off));
    for (a, b) in cached.epochs.iter().zip(&naive.epochs) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-5, "{a:?} vs {b:?}");
        assert!((a.test_loss - b.test_loss).abs() < 1e-5, "{a:?} vs {b:?}");
        assert!((a.test_accuracy - b.test_accuracy).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn bf16_features_leave_the_base_untouched_and_train_as_well() {
    let (train, test) = (synthetic(256, 27), synthetic(128, 28));
    let run = |precision| {
        let (mut base_store, base, head_store, head) = models(29);
        let before = snapshot(&base_store);
        let config = RefineConfig { precision, ..refine_config(3, FeatureCache::Memory) };
        let report =
            refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
                .unwrap();
        assert_eq!(snapshot(&base_store), before, "{precision:?} moved a frozen tensor");
        report.evaluation.accuracy
    };
    let (exact, low) = (run(Precision::F32), run(Precision::Bf16));
    assert!((exact - low).abs() <= 0.02, "f32 {exact} vs bf16 {low}");
}

#[test]
fn the_disk_cache_is_written_then_reused() {
    let (train, test) = (synthetic(64, 8), synthetic(32, 9));
    let dir = tempfile::tempdir().unwrap();
    let config = refine_config(1, FeatureCache::Disk(dir.path().to_path_buf()));
    let (mut base_store, base, head_store, head) = models(10);
    let first =
        refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
            .unwrap();
    assert!(!first.features_from_disk);
    let (mut base_store, base, head_store, head) = models(10);
    let second =
        refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
            .unwrap();
    assert!(second.features_from_disk);
    assert_eq!(without_time(&first.epochs), without_time(&second.epochs));
    // Another base (other weights) must not reuse those features.
    let (mut base_store, base, head_store, head) = models(11);
    let third =
        refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
            .unwrap();
    assert!(!third.features_from_disk);
}

#[test]
fn same_seed_same_weights_and_resume_equals_an_uninterrupted_run() {
    let (train, test) = (synthetic(128, 12), synthetic(32, 13));
    let dir = tempfile::tempdir().unwrap();
    let run = |epochs: usize, state_dir: Option<&std::path::Path>| {
        let (mut base_store, base, head_store, head) = models(14);
        let config = RefineConfig {
            state_dir: state_dir.map(|d| d.to_path_buf()),
            ..refine_config(epochs, FeatureCache::Memory)
        };
        let report =
            refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
                .unwrap();
        (snapshot(&head_store), report)
    };
    let (uninterrupted, full_report) = run(3, None);
    assert_eq!(run(3, None).0, uninterrupted, "same seed gave different weights");
    // A run that stopped after 2 epochs, then the same run asked for 3.
    let (_, partial) = run(2, Some(dir.path()));
    assert_eq!(partial.resumed_epochs, 0);
    let (resumed, resumed_report) = run(3, Some(dir.path()));
    assert_eq!(resumed_report.resumed_epochs, 2);
    assert_eq!(resumed, uninterrupted, "resumed weights differ from an uninterrupted run");
    assert_eq!(without_time(&resumed_report.epochs), without_time(&full_report.epochs));
}

#[test]
fn fine_tuning_from_a_split_point_trains_only_the_later_stages() {
    let (train, test) = (synthetic(96, 15), synthetic(32, 16));
    let (mut base_store, base, head_store, head) = models(17);
    let before = snapshot(&base_store);
    let config = RefineConfig {
        train_from: Some("representation".into()),
        base_lr: Some(0.01),
        ..refine_config(1, FeatureCache::Memory)
    };
    let report =
        refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
            .unwrap();
    for ((name, old), (_, new)) in before.iter().zip(&snapshot(&base_store)) {
        let should_change = name.starts_with("representation.");
        assert_eq!(old != new, should_change, "{name}");
    }
    let trained: Vec<&str> =
        report.freeze.tensors.iter().filter(|t| t.trained).map(|t| t.name.as_str()).collect();
    assert_eq!(
        trained,
        [
            "base.representation.bias",
            "base.representation.weight",
            "head.final.bias",
            "head.final.weight",
            "head.hidden.bias",
            "head.hidden.weight"
        ]
    );
}

#[test]
fn an_unknown_split_point_names_the_known_ones() {
    let (_, base, _, _) = models(0);
    let error = split_index(&base, Some("conv9")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown layer \"conv9\" for the split point; the base's trainable layers are: conv1, conv2, representation"
    );
}

#[test]
fn a_diverging_loss_stops_with_the_epoch_and_step() {
    let (train, test) = (synthetic(64, 18), synthetic(16, 19));
    let (mut base_store, base, head_store, head) = models(20);
    let mut config = refine_config(2, FeatureCache::Memory);
    config.fit.optimizer = OptimizerConfig::Sgd { lr: 1e30, momentum: 0.9, weight_decay: 0.0 };
    let error =
        refine(&base, &mut base_store, &head, &head_store, &train, &test, &config, &mut |_| {})
            .unwrap_err();
    assert!(matches!(error, Error::NonFiniteLoss { epoch: 1, .. }), "{error}");
    assert!(error.to_string().contains("hint: lower the learning rate"), "{error}");
}

#[test]
fn an_empty_dataset_is_refused() {
    let (mut base_store, base, head_store, head) = models(0);
    let empty = synthetic(10, 1).take(0);
    let error = refine(
        &base,
        &mut base_store,
        &head,
        &head_store,
        &empty,
        &synthetic(4, 2),
        &refine_config(1, FeatureCache::Memory),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(error, Error::EmptyDataset), "{error}");
}

#[test]
fn sgd_with_momentum_and_weight_decay_follows_pytorch() {
    let param = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let mut optimizer = Optimizer::new(vec![(
        OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.5 },
        vec![("p".into(), param.shallow_clone())],
    )]);
    for _ in 0..2 {
        optimizer.step(&(&param * &param).sum(Kind::Float));
    }
    assert!(!param.grad().defined(), "gradients are returned, not accumulated");
    // By hand: g = 2p + 0.5p = 2.5p. Step 1: buf = 2.5p0, p1 = p0 - 0.1 * 2.5p0 = 0.75p0.
    // Step 2: g = 2.5 * 0.75p0 = 1.875p0, buf = 0.9 * 2.5p0 + 1.875p0 = 4.125p0,
    // p2 = 0.75p0 - 0.4125p0 = 0.3375p0.
    let expected = Tensor::from_slice(&[0.3375f32, -0.675]);
    assert!(param.allclose(&expected, 1e-6, 1e-6, false), "{param}");
    let (state, steps) = optimizer.state();
    assert_eq!((state.len(), steps), (1, 2));
    assert_eq!(state[0].0, "p.momentum");
}

#[test]
fn adam_matches_its_closed_form_first_step() {
    let param = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let config =
        OptimizerConfig::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut optimizer = Optimizer::new(vec![(config, vec![("p".into(), param.shallow_clone())])]);
    optimizer.step(&(&param * 3.0).sum(Kind::Float));
    // The first Adam step moves by lr * g / (|g| + eps) = lr.
    assert!((param.double_value(&[0]) - 0.49).abs() < 1e-6, "{param}");
    assert_eq!(optimizer.state().0.len(), 2);
}

#[test]
fn checkpoints_round_trip_and_are_loaded_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let (base_store, _, head_store, _) = models(21);
    let base_path = dir.path().join("base.safetensors");
    let fingerprint = save_base(&base_path, &base_store).unwrap();
    let (loaded, _) = load_base(&base_path, Device::Cpu).unwrap();
    assert_eq!(store_fingerprint(&loaded), fingerprint);
    assert_eq!(snapshot(&loaded), snapshot(&base_store));

    let head_path = dir.path().join("head.safetensors");
    let binding = HeadBinding {
        base_fingerprint: fingerprint.clone(),
        train_from: None,
        config: HeadConfig { n_classes: 4, ..HeadConfig::default() },
    };
    save_head(&head_path, &head_store, &binding).unwrap();
    let (head_loaded, _, read_binding) =
        load_head(&head_path, Device::Cpu, &fingerprint, false).unwrap();
    assert_eq!(read_binding, binding);
    assert_eq!(snapshot(&head_loaded), snapshot(&head_store));

    // On another base: refused, unless overridden.
    let error = load_head(&head_path, Device::Cpu, "another", false).unwrap_err();
    assert!(matches!(error, Error::BaseMismatch { .. }), "{error}");
    assert!(load_head(&head_path, Device::Cpu, "another", true).is_ok());

    // A base file given as a head, and a head given as a base.
    assert!(matches!(
        load_head(&base_path, Device::Cpu, &fingerprint, false).unwrap_err(),
        Error::CheckpointKind { .. }
    ));
    assert!(matches!(
        load_base(&head_path, Device::Cpu).unwrap_err(),
        Error::CheckpointKind { .. }
    ));
}

#[test]
fn a_base_saved_for_another_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base_store, _, _, _) = models(25);
    let path = dir.path().join("base.safetensors");
    save_base(&path, &base_store).unwrap();
    assert!(load_base(&path, Device::Cpu).is_ok());
    let saved = checkpoint::load(&path, Device::Cpu).unwrap();
    // As written before architectures were recorded (revision 1 summed its pooling windows).
    let mut metadata = saved.metadata.clone();
    metadata.remove("architecture");
    checkpoint::save(&path, &saved.tensors, metadata.clone()).unwrap();
    let error = load_base(&path, Device::Cpu).unwrap_err();
    assert!(
        matches!(&error, Error::Architecture { found, .. } if found.starts_with("base-cnn/1")),
        "{error}"
    );
    assert!(error.to_string().contains("pretrain a new base"), "{error}");
    metadata.insert("architecture".to_owned(), "base-cnn/3".to_owned());
    checkpoint::save(&path, &saved.tensors, metadata).unwrap();
    assert!(matches!(load_base(&path, Device::Cpu).unwrap_err(), Error::Architecture { .. }));
}

#[test]
fn a_wrong_shape_or_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (base_store, _, _, _) = models(22);
    let mut tensors = checkpoint::named_variables(&base_store);
    let metadata = std::collections::BTreeMap::from([
        (checkpoint::KIND_KEY.to_owned(), "base".to_owned()),
        ("architecture".to_owned(), BaseCnn::ARCHITECTURE.to_owned()),
    ]);
    let index = tensors.iter().position(|(name, _)| name == "conv2.weight").unwrap();
    tensors[index].1 = Tensor::zeros([64, 32, 5, 5], (Kind::Float, Device::Cpu));
    let path = dir.path().join("wrong.safetensors");
    checkpoint::save(&path, &tensors, metadata.clone()).unwrap();
    let error = load_base(&path, Device::Cpu).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: tensor \"conv2.weight\" has shape [64, 32, 5, 5], the model expects [64, 32, 3, 3]",
            path.display()
        )
    );

    let _ = tensors.remove(index);
    checkpoint::save(&path, &tensors, metadata.clone()).unwrap();
    assert!(
        matches!(load_base(&path, Device::Cpu).unwrap_err(), Error::MissingTensor { name, .. } if name == "conv2.weight")
    );

    tensors.push(("extra".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
    tensors
        .push(("conv2.weight".into(), Tensor::zeros([64, 32, 3, 3], (Kind::Float, Device::Cpu))));
    checkpoint::save(&path, &tensors, metadata).unwrap();
    assert!(
        matches!(load_base(&path, Device::Cpu).unwrap_err(), Error::UnexpectedTensor { name, .. } if name == "extra")
    );
}

#[test]
fn garbage_and_truncated_files_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    assert!(matches!(load_base(&path, Device::Cpu).unwrap_err(), Error::BadCheckpoint { .. }));
    let (base_store, _, _, _) = models(23);
    save_base(&path, &base_store).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_base(&path, Device::Cpu).unwrap_err();
    assert!(matches!(error, Error::BadCheckpoint { .. }), "{error}");
}

/// A second kind of base: a two-stage MLP, to show the trainer needs only [`StagedBase`].
struct Mlp {
    stages: [nn::Linear; 2],
    classifier: nn::Linear,
}

impl StagedBase for Mlp {
    fn architecture(&self) -> &'static str {
        "test-mlp/1"
    }
    fn stage_names(&self) -> &[&'static str] {
        &["flat", "representation"]
    }
    fn forward_stages(&self, xs: &Tensor, stages: Range<usize>, _train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for stage in stages {
            xs = if stage == 0 {
                self.stages[0].forward(&xs.flatten(1, -1)).relu()
            } else {
                self.stages[1].forward(&xs).relu()
            };
        }
        xs
    }
    fn classify(&self, representation: &Tensor) -> Tensor {
        self.classifier.forward(representation).log_softmax(-1, Kind::Float)
    }
}

#[test]
fn any_staged_base_can_be_pretrained_and_refined() {
    let guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(24);
    let mut base_store = VarStore::new(Device::Cpu);
    let root = base_store.root();
    let base = Mlp {
        stages: [
            nn::linear(&root / "flat", 784, 128, Default::default()),
            nn::linear(&root / "representation", 128, 256, Default::default()),
        ],
        classifier: nn::linear(&root / "classifier", 256, 4, Default::default()),
    };
    let head_store = VarStore::new(Device::Cpu);
    let head =
        RefineHead::new(&head_store.root(), HeadConfig { n_classes: 4, ..HeadConfig::default() });
    drop(guard);
    let (train, test) = (synthetic(128, 25), synthetic(32, 26));
    let pretrained =
        pretrain(&base, &mut base_store, &train, &test, &fit(1, 0.05), None, &mut |_| {}).unwrap();
    assert_eq!(pretrained.epochs.len(), 1);
    let frozen = snapshot(&base_store);
    let report = refine(
        &base,
        &mut base_store,
        &head,
        &head_store,
        &train,
        &test,
        &refine_config(1, FeatureCache::Memory),
        &mut |_| {},
    )
    .unwrap();
    assert!(report.head_changed);
    assert_eq!(snapshot(&base_store), frozen);
}
