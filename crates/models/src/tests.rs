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

/// libtorch's own `conv1` → relu → avg_pool over `images`, with the base's conv1 weights.
fn reference_conv1_stage(base_store: &nn::VarStore, images: &Tensor) -> Tensor {
    let variables = base_store.variables();
    images
        .conv2d(
            &variables["conv1.weight"],
            Some(&variables["conv1.bias"]),
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
        .relu()
        .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
}

/// A base whose biases are non-zero (fresh ones are zero, which would hide a bias bug).
fn base_with_biases(seed: i64) -> (nn::VarStore, BaseCnn) {
    tch::manual_seed(seed);
    let store = nn::VarStore::new(Device::Cpu);
    let base = BaseCnn::new(&store.root(), 10);
    tch::no_grad(|| {
        for (name, tensor) in store.variables() {
            if name.ends_with(".bias") {
                tensor.shallow_clone().copy_(&(tensor.rand_like() - 0.5));
            }
        }
    });
    (store, base)
}

#[test]
fn the_fused_conv1_equals_libtorchs_convolution_relu_and_pooling() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(3);
    // 1, 7 and 128 run on one thread; 1031 on two, with uneven shares.
    for n in [1, 7, 128, 1031] {
        // MNIST-like inputs: mostly exact zeros, the rest in (0, 1].
        let images = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
        let images = images.shallow_clone() * images.gt(0.6);
        let expected = reference_conv1_stage(&store, &images);
        let variables = store.variables();
        let fused = crate::fused_conv1::conv3x3_relu_avgpool2(
            &images,
            &variables["conv1.weight"],
            &variables["conv1.bias"],
        )
        .expect("the fused pass applies to [N, 1, 28, 28] on the CPU");
        assert!(fused.equal(&base.forward_stages(&images, 0..1, false)), "inference uses it");
        assert_eq!(fused.size(), [n, 32, 14, 14]);
        assert!(
            fused.allclose(&expected, 1e-5, 1e-6, false),
            "batch {n}: max diff {}",
            (&fused - &expected).abs().max()
        );
        assert_eq!(fused.stride(), [14 * 14 * 32, 1, 14 * 32, 32], "conv2 reads channels-last");
        let training = base.forward_stages(&images, 0..1, true);
        assert!(training.allclose(&expected, 1e-5, 1e-6, false), "batch {n}: training path");

        // bf16 in, bf16 out: float32 arithmetic, rounded once at the end.
        let (weight, bias) = (&variables["conv1.weight"], &variables["conv1.bias"]);
        let low = images.to_kind(Kind::BFloat16);
        let fused = crate::fused_conv1::conv3x3_relu_avgpool2(&low, weight, bias).unwrap();
        assert_eq!(fused.kind(), Kind::BFloat16);
        let exact = reference_conv1_stage(&store, &low.to_kind(Kind::Float));
        let rounded = exact.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        assert!(
            fused.to_kind(Kind::Float).allclose(&rounded, 1.0 / 128.0, 1e-6, false),
            "batch {n}: bf16"
        );
    }
}

#[test]
fn other_image_sizes_take_libtorchs_path() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(8);
    let variables = store.variables();
    let images = Tensor::rand([3, 1, 20, 20], (Kind::Float, Device::Cpu));
    let (weight, bias) = (&variables["conv1.weight"], &variables["conv1.bias"]);
    assert!(crate::fused_conv1::conv3x3_relu_avgpool2(&images, weight, bias).is_none());
    let staged = base.forward_stages(&images, 0..1, false);
    assert!(staged.allclose(&reference_conv1_stage(&store, &images), 1e-5, 1e-6, false));
}

/// libtorch's own `conv2` → relu → avg_pool over `xs`, flattened, with the base's conv2 weights.
fn reference_conv2_stage(base_store: &nn::VarStore, xs: &Tensor) -> Tensor {
    let variables = base_store.variables();
    xs.conv2d(&variables["conv2.weight"], Some(&variables["conv2.bias"]), [1, 1], [1, 1], [1, 1], 1)
        .relu()
        .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
        .flatten(1, -1)
}

#[test]
fn the_winograd_conv2_equals_libtorchs_convolution_relu_and_pooling() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(4);
    let variables = store.variables();
    let (weight, bias) = (&variables["conv2.weight"], &variables["conv2.bias"]);
    // 1 and 7 run on one thread; 128 and 301 on two, 301 with uneven shares.
    for n in [1, 7, 128, 301] {
        // What conv2 really sees: conv1's output on MNIST-like images (sparse, channels-last).
        let images = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
        let images = images.shallow_clone() * images.gt(0.6);
        let maps = base.forward_stages(&images, 0..1, false);
        let expected = reference_conv2_stage(&store, &maps);
        let winograd = crate::winograd_conv2::conv3x3_relu_avgpool2_flat(&maps, weight, bias)
            .expect("the pass applies to float [N, 32, 14, 14] on the CPU");
        assert!(winograd.equal(&base.forward_stages(&maps, 1..2, false)), "inference uses it");
        assert_eq!(winograd.size(), [n, 3136]);
        assert!(
            winograd.allclose(&expected, 1e-5, 1e-5, false),
            "batch {n}: max diff {}",
            (&winograd - &expected).abs().max()
        );
        // NCHW strides give the same result as channels-last ones.
        let plain =
            crate::winograd_conv2::conv3x3_relu_avgpool2_flat(&maps.contiguous(), weight, bias);
        assert!(plain.is_some_and(|plain| plain.equal(&winograd)), "batch {n}: NCHW input");
        let training = base.forward_stages(&maps, 1..2, true);
        assert!(training.allclose(&expected, 1e-5, 1e-5, false), "batch {n}: training path");
    }
    // bf16 in, bf16 out: float32 arithmetic, rounded once at the end.
    let maps = Tensor::rand([2, 32, 14, 14], (Kind::Float, Device::Cpu));
    let low = maps.to_kind(Kind::BFloat16);
    let pass = |xs: &Tensor| crate::winograd_conv2::conv3x3_relu_avgpool2_flat(xs, weight, bias);
    let rounded = pass(&low.to_kind(Kind::Float)).unwrap().to_kind(Kind::BFloat16);
    assert!(pass(&low).unwrap().equal(&rounded));
    // Other kinds and shapes are left to libtorch.
    assert!(pass(&maps.to_kind(Kind::Double)).is_none());
    let small = Tensor::rand([2, 32, 10, 10], (Kind::Float, Device::Cpu));
    assert!(crate::winograd_conv2::conv3x3_relu_avgpool2_flat(&small, weight, bias).is_none());
}

#[test]
fn cpu_inference_equals_libtorchs_layers_and_the_stages_run_one_by_one() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(5);
    let variables = store.variables();
    // 1 and 13 run on one thread; 200 on two, in chunks of 64 and a partial one.
    for n in [1, 13, 200] {
        let images = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
        let images = images.shallow_clone() * images.gt(0.6);
        let flat = reference_conv2_stage(&store, &reference_conv1_stage(&store, &images));
        let expected = flat
            .linear(&variables["representation.weight"], Some(&variables["representation.bias"]))
            .relu();
        let whole = base.forward_stages(&images, 0..3, false);
        assert!(
            whole.allclose(&expected, 1e-5, 1e-5, false),
            "batch {n}: max diff {}",
            (&whole - &expected).abs().max()
        );
        let mut staged = images.shallow_clone();
        for stage in 0..3 {
            staged = base.forward_stages(&staged, stage..stage + 1, false);
        }
        assert!(staged.equal(&whole), "batch {n}: stage by stage");
    }
}

#[test]
fn the_representation_stage_equals_a_linear_layer_over_the_flattened_map() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(6);
    let variables = store.variables();
    let flat = Tensor::rand([9, 3136], (Kind::Float, Device::Cpu));
    let expected = flat
        .linear(&variables["representation.weight"], Some(&variables["representation.bias"]))
        .relu();
    for train in [false, true] {
        let staged = base.forward_stages(&flat, 2..3, train);
        assert_eq!(staged.size(), [9, 256]);
        assert!(
            staged.allclose(&expected, 1e-5, 1e-5, false),
            "train {train}: max diff {}",
            (&staged - &expected).abs().max()
        );
    }
}

#[test]
fn training_gradients_match_the_plain_layers() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(7);
    let images = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
    let variables = store.variables();
    let plain = |images: &Tensor| {
        let v = &variables;
        let conv = |xs: &Tensor, name: &str| {
            let (ws, bs) = (&v[&format!("{name}.weight")], &v[&format!("{name}.bias")]);
            xs.conv2d(ws, Some(bs), [1, 1], [1, 1], [1, 1], 1).relu().avg_pool2d(
                [2, 2],
                [2, 2],
                [0, 0],
                false,
                true,
                None::<i64>,
            )
        };
        let flat = conv(&conv(images, "conv1"), "conv2").flatten(1, -1);
        flat.linear(&v["representation.weight"], Some(&v["representation.bias"])).relu()
    };
    let gradients = |representation: Tensor| {
        let loss =
            (representation * Tensor::arange(256, (Kind::Float, Device::Cpu))).sum(Kind::Float);
        let mut names: Vec<&String> =
            variables.keys().filter(|n| !n.starts_with("classifier")).collect();
        names.sort();
        let tensors: Vec<Tensor> = names.iter().map(|n| variables[*n].shallow_clone()).collect();
        Tensor::run_backward(&[loss], &tensors, false, false)
    };
    let expected = gradients(plain(&images));
    let staged = gradients(base.forward_stages(&images, 0..3, true));
    for (a, b) in staged.iter().zip(&expected) {
        let scale = b.abs().max().double_value(&[]).max(1e-6);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale, "gradient differs: {diff} (scale {scale})");
    }
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
fn bf16_inference_rounds_each_layer_like_libtorchs_bf16_layers_whole_or_stage_by_stage() {
    let _rng = rng_lock();
    let (store, base) = base_with_biases(9);
    let copy = base.inference_copy(Kind::BFloat16).unwrap();
    // The same base with its weights rounded to bf16, in float32.
    let (low_store, low_base) = base_with_biases(9);
    tch::no_grad(|| {
        let variables = store.variables();
        for (name, target) in low_store.variables() {
            let rounded = variables[&name].to_kind(Kind::BFloat16).to_kind(Kind::Float);
            target.shallow_clone().copy_(&rounded);
        }
    });
    // 1 and 13 on one thread; 150 on two, in chunks of 64 and a partial one.
    for n in [1, 13, 150] {
        let images = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
        let images = (images.shallow_clone() * images.gt(0.6)).to_kind(Kind::BFloat16);
        let whole = copy.forward_stages(&images, 0..3, false);
        assert_eq!(whole.kind(), Kind::BFloat16);
        let mut staged = images.shallow_clone();
        for stage in 0..3 {
            staged = copy.forward_stages(&staged, stage..stage + 1, false);
            assert_eq!(staged.kind(), Kind::BFloat16);
        }
        assert!(staged.equal(&whole), "batch {n}: stage by stage");

        // libtorch's layers in float32 over the bf16 weights, each output rounded to bf16.
        let round = |xs: Tensor| xs.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let mut expected = images.to_kind(Kind::Float);
        for stage in 0..3 {
            expected = round(low_base.forward_stages(&expected, stage..stage + 1, true));
        }
        let whole = whole.to_kind(Kind::Float);
        // Sums taken in another order may round to the neighbouring bf16 value (2^-8 apart).
        let relative =
            (&whole - &expected).norm().double_value(&[]) / expected.norm().double_value(&[]);
        assert!(relative < 2e-3, "batch {n}: relative difference {relative}");
    }
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
