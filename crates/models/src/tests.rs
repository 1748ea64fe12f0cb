//! Shape, naming and staging tests on CPU.

use tch::{Device, Kind, Tensor, nn};

use crate::*;

/// libtorch's generator is global and tests run in parallel: every test that seeds or draws
/// holds this lock, so one test's draws never land between another's seed and draws.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn base_returns_log_probs_and_representation() {
    let _rng = rng_lock();
    tch::manual_seed(0);
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    let images = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
    let (log_probs, representation) = base.forward(&images);
    assert_eq!(log_probs.size(), [5, 10]);
    assert_eq!(representation.size(), [5, 256]);
    assert!(representation.min().double_value(&[]) >= 0.0, "representation is after its relu");
    let total = log_probs.exp().sum_dim_intlist(-1, false, Kind::Float);
    assert!(total.allclose(&Tensor::ones([5], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false));
}

#[test]
fn staged_forward_equals_the_whole_forward() {
    let _rng = rng_lock();
    tch::manual_seed(1);
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    let images = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let whole = base.forward_stages(&images, 0..3, false);
    for split in 0..=3 {
        let low = base.forward_stages(&images, 0..split, false);
        let high = base.forward_stages(&low, split..3, false);
        assert!(high.equal(&whole), "split at {split} differs");
    }
    assert_eq!(base.forward_stages(&images, 0..1, false).size(), [3, 32, 14, 14]);
    assert_eq!(base.forward_stages(&images, 0..2, false).size(), [3, 3136]);
}

#[test]
fn variable_names_and_layouts_match_pytorch() {
    let _rng = rng_lock();
    let store = nn::VarStore::new(Device::Cpu);
    let _base = BaseCnn::new(&store.root(), 10);
    let head_store = nn::VarStore::new(Device::Cpu);
    let _head = RefineHead::new(&head_store.root(), HeadConfig::default());
    let shapes = |store: &nn::VarStore| {
        let mut shapes: Vec<(String, Vec<i64>)> =
            store.variables().into_iter().map(|(name, tensor)| (name, tensor.size())).collect();
        shapes.sort();
        shapes
    };
    let expected: Vec<(String, Vec<i64>)> = [
        ("classifier.bias", vec![10]),
        ("classifier.weight", vec![10, 256]),
        ("conv1.bias", vec![32]),
        ("conv1.weight", vec![32, 1, 3, 3]),
        ("conv2.bias", vec![64]),
        ("conv2.weight", vec![64, 32, 3, 3]),
        ("representation.bias", vec![256]),
        ("representation.weight", vec![256, 3136]),
    ]
    .into_iter()
    .map(|(name, shape)| (name.to_owned(), shape))
    .collect();
    assert_eq!(shapes(&store), expected);
    let head: Vec<(String, Vec<i64>)> = [
        ("final.bias", vec![10]),
        ("final.weight", vec![10, 64]),
        ("hidden.bias", vec![64]),
        ("hidden.weight", vec![64, 256]),
    ]
    .into_iter()
    .map(|(name, shape)| (name.to_owned(), shape))
    .collect();
    assert_eq!(shapes(&head_store), head);
}

#[test]
fn initialisation_is_lecun_normal_with_zero_biases() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let store = nn::VarStore::new(Device::Cpu);
    let _base = BaseCnn::new(&store.root(), 10);
    let variables = store.variables();
    let weight = &variables["representation.weight"];
    let std = weight.std(true).double_value(&[]);
    let expected = 1.0 / 3136f64.sqrt();
    assert!((std - expected).abs() < 0.02 * expected, "std {std}, expected {expected}");
    assert!(weight.mean(Kind::Float).double_value(&[]).abs() < 0.01 * expected * 10.0);
    for bias in ["conv1.bias", "conv2.bias", "representation.bias", "classifier.bias"] {
        assert_eq!(variables[bias].abs().sum(Kind::Float).double_value(&[]), 0.0, "{bias}");
    }
}

#[test]
fn head_maps_representations_to_log_probs() {
    let _rng = rng_lock();
    let store = nn::VarStore::new(Device::Cpu);
    let config = HeadConfig { input_dim: 8, hidden_dim: 4, n_classes: 3 };
    let head = RefineHead::new(&store.root(), config);
    let out = head.forward(&Tensor::rand([6, 8], (Kind::Float, Device::Cpu)));
    assert_eq!(out.size(), [6, 3]);
    assert!(out.max().double_value(&[]) <= 0.0);
}

#[test]
fn the_patch_product_conv1_equals_the_direct_convolution() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    let conv1 = nn::conv2d(
        store.root() / "direct",
        1,
        32,
        3,
        nn::ConvConfig { padding: 1, ..Default::default() },
    );
    let variables = store.variables();
    tch::no_grad(|| {
        let mut ws = conv1.ws.shallow_clone();
        ws.copy_(&variables["conv1.weight"]);
        conv1
            .bs
            .as_ref()
            .unwrap()
            .shallow_clone()
            .copy_(&(variables["conv1.bias"].rand_like() - 0.5));
        variables["conv1.bias"].shallow_clone().copy_(conv1.bs.as_ref().unwrap());
    });
    let images = Tensor::rand([7, 1, 28, 28], (Kind::Float, Device::Cpu));
    let direct = nn::Module::forward(&conv1, &images).relu().avg_pool2d_default(2);
    let staged = base.forward_stages(&images, 0..1, false);
    assert_eq!(staged.size(), [7, 32, 14, 14]);
    assert!(
        staged.allclose(&direct, 1e-5, 1e-6, false),
        "max diff {}",
        (&staged - &direct).abs().max()
    );
    let training = base.forward_stages(&images, 0..1, true);
    assert!(training.allclose(&staged, 1e-5, 1e-6, false), "train and eval paths differ");
}

#[test]
fn a_bf16_inference_copy_is_close_to_the_f32_base_and_leaves_it_alone() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    let sorted = |store: &nn::VarStore| -> Vec<(String, Tensor)> {
        let mut variables: Vec<(String, Tensor)> =
            store.variables().into_iter().map(|(name, tensor)| (name, tensor.copy())).collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        variables
    };
    let before = sorted(&store);
    let copy = base.inference_copy(Kind::BFloat16).unwrap();
    let images = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let exact = base.forward_stages(&images, 0..3, false);
    let low = copy.forward_stages(&images.to_kind(Kind::BFloat16), 0..3, false);
    assert_eq!(low.kind(), Kind::BFloat16);
    let low = low.to_kind(Kind::Float);
    let relative = (&low - &exact).norm().double_value(&[]) / exact.norm().double_value(&[]);
    assert!(relative < 0.02, "relative error {relative}");
    let after = sorted(&store);
    assert!(
        before.iter().zip(&after).all(|(a, b)| a.0 == b.0 && a.1.equal(&b.1)),
        "the f32 base changed"
    );
    assert!(after.iter().all(|(_, t)| t.kind() == Kind::Float));
}

#[test]
fn an_inference_copy_draws_nothing_from_the_global_generator() {
    let _rng = rng_lock();
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    tch::manual_seed(5);
    let expected = Tensor::randn([4], (Kind::Float, Device::Cpu));
    tch::manual_seed(5);
    let _copy = base.inference_copy(Kind::BFloat16).unwrap();
    let drawn = Tensor::randn([4], (Kind::Float, Device::Cpu));
    assert!(drawn.equal(&expected));
}
