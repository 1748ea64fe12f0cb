//! The refine head's training step in plain Rust, for CPU runs in which only the head trains.
//!
//! A step of the head over a batch of 128 representations is two products of about two million
//! multiply-adds each (the hidden layer forward, and its weight's gradient) plus a few small
//! ones. Through libtorch that is ~40 operators and an autograd pass, whose dispatch costs more
//! than the arithmetic. Here the forward pass, the gradients (derived by hand: the head's form
//! is fixed, see [`models::RefineHead::forward`]) and the optimizer's update run as loops over
//! flat buffers, the products through a register-tiled kernel ([`matmul`]).
//!
//! Parameters and optimizer state are read from their tensors when training starts and written
//! back after every epoch, so evaluation, checkpoints and resuming see what the autograd path
//! would produce (to float32 rounding: sums are taken in another order). A test compares the two.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, PoisonError, RwLock};

use kernels::matmul;
use tch::{Kind, Tensor};

use crate::fit::Steps;
use crate::optim::{Optimizer, OptimizerConfig, state_names};

/// The head's tensors, by the ends of their names (`models::RefineHead`'s layout).
const PARAMETER_NAMES: [&str; 4] = ["hidden.weight", "hidden.bias", "final.weight", "final.bias"];
/// Index of the hidden layer's weight, the one tensor kept transposed here.
const HIDDEN_WEIGHT: usize = 0;
const HIDDEN_BIAS: usize = 1;
const FINAL_WEIGHT: usize = 2;
const FINAL_BIAS: usize = 3;

/// The head's sizes.
#[derive(Clone, Copy, Debug)]
struct Dims {
    input: usize,
    hidden: usize,
    classes: usize,
}

/// What both threads read during a step.
struct Shared {
    dims: Dims,
    /// Cached representations `[N, input]` row-major (empty when they are computed per batch).
    features: Vec<f32>,
    /// Every training example's label.
    labels: Vec<i64>,
    /// Parameters, in [`PARAMETER_NAMES`] order; the hidden weight transposed to
    /// `[input, hidden]`, so that both of the large products run along the hidden dimension.
    /// Read by both halves of a step, written by the update between steps.
    parameters: RwLock<[Vec<f32>; 4]>,
}

/// One half of a batch's buffers: its inputs, activations and gradients.
#[derive(Default)]
struct Work {
    /// Inputs `[rows, input]`.
    inputs: Vec<f32>,
    /// Labels `[rows]`.
    labels: Vec<i64>,
    /// Hidden activations `[rows, hidden]` (after relu).
    hidden: Vec<f32>,
    /// Logits, then their gradient, `[rows, padded]`: classes padded to a multiple of 16
    /// columns (see `half_step`).
    logits: Vec<f32>,
    /// The hidden activations' gradient `[rows, hidden]`.
    hidden_grad: Vec<f32>,
    /// The output layer's weight transposed and padded with zero columns, `[hidden, padded]`.
    final_weight_t: Vec<f32>,
    /// One gradient per parameter, in the parameters' layout: this half's share of the batch's.
    grads: [Vec<f32>; 4],
}

/// A half of a step handed to the helper thread, with the buffers it works in.
struct Job {
    /// Examples (rows of the training set).
    indices: Vec<usize>,
    /// Whether `work.inputs` already holds their representations (else they are cached).
    inputs_given: bool,
    /// Examples in the whole batch (the loss is the batch's mean).
    batch: usize,
    work: Work,
}

/// A job done: its buffers back, with the half's loss sum and correct count.
type Done = (Work, f64, i64);

/// The thread that takes the second half of every step.
struct Helper {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

/// Busy-wait iterations before a thread blocks on a channel: the other half of a step is due
/// within a few hundred microseconds, and waking a blocked thread costs tens of them.
const SPINS: usize = 5_000;

/// Receives from `channel`, spinning for a while before blocking.
fn receive<T>(channel: &Receiver<T>) -> Option<T> {
    for _ in 0..SPINS {
        match channel.try_recv() {
            Ok(value) => return Some(value),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    channel.recv().ok()
}

impl Helper {
    fn start(shared: Arc<Shared>) -> Option<Helper> {
        let (jobs, job_channel) = mpsc::channel::<Job>();
        let (done_sender, done) = mpsc::channel::<Done>();
        std::thread::Builder::new()
            .name("refine-head".to_owned())
            .spawn(move || {
                while let Some(mut job) = receive(&job_channel) {
                    let (loss, correct) = half_step(&shared, &mut job);
                    if done_sender.send((job.work, loss, correct)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Helper { jobs, done })
    }
}

/// The head's parameters and optimizer state as flat float32 buffers, and the step over them.
///
/// Every step splits its batch in two halves whose gradients are computed separately and then
/// summed, on two threads when there are two (a helper thread takes the second half), else one
/// after the other: the arithmetic, and so every result, is the same either way.
pub(crate) struct CpuHead {
    /// Optimizer names and tensors of the four parameters, in [`PARAMETER_NAMES`] order.
    tensors: Vec<(String, Tensor)>,
    rule: OptimizerConfig,
    shared: Arc<Shared>,
    /// SGD's momentum buffers or Adam's first moments (`None` before the first step).
    first: [Option<Vec<f32>>; 4],
    /// Adam's second moments.
    second: [Option<Vec<f32>>; 4],
    steps: i64,
    /// The two halves' buffers (the second's is away while the helper has it).
    work: [Option<Work>; 2],
    helper: Option<Helper>,
}

impl CpuHead {
    /// The head made of `parameters` (optimizer names and tensors), trained by `rule`, with the
    /// state `optimizer_state` holds (`Optimizer::state`'s names and step count), over
    /// `features` (cached representations, row-major; empty when they will be given per step)
    /// and `labels`, on up to `threads` threads. `None` when the tensors are not exactly a
    /// float32 `RefineHead` on the CPU, or the features do not fit it: then autograd trains it.
    pub(crate) fn new(
        parameters: &[(String, Tensor)],
        rule: OptimizerConfig,
        optimizer_state: (Vec<(String, Tensor)>, i64),
        features: Vec<f32>,
        labels: Vec<i64>,
        threads: usize,
    ) -> Option<CpuHead> {
        if parameters.len() != PARAMETER_NAMES.len() {
            return None;
        }
        let tensors: Vec<(String, Tensor)> = PARAMETER_NAMES
            .iter()
            .map(|suffix| {
                parameters
                    .iter()
                    .find(|(name, _)| name.ends_with(suffix))
                    .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
            })
            .collect::<Option<_>>()?;
        if tensors.iter().any(|(_, t)| t.kind() != Kind::Float || t.device() != tch::Device::Cpu) {
            return None;
        }
        let sizes: Vec<Vec<i64>> = tensors.iter().map(|(_, t)| t.size()).collect();
        let [hidden, input] = sizes[HIDDEN_WEIGHT][..] else { return None };
        let [classes, final_input] = sizes[FINAL_WEIGHT][..] else { return None };
        if final_input != hidden
            || sizes[HIDDEN_BIAS] != [hidden]
            || sizes[FINAL_BIAS] != [classes]
            || [hidden, input, classes].iter().any(|&d| d <= 0)
        {
            return None;
        }
        let dims =
            Dims { input: input as usize, hidden: hidden as usize, classes: classes as usize };
        if !features.is_empty() && features.len() != labels.len() * dims.input {
            return None;
        }
        let flat: Vec<Vec<f32>> = tensors
            .iter()
            .enumerate()
            .map(|(index, (_, t))| to_flat(index, t))
            .collect::<Option<_>>()?;
        let parameters: [Vec<f32>; 4] = flat.try_into().ok()?;

        let (state, steps) = optimizer_state;
        let state: HashMap<String, Tensor> = state.into_iter().collect();
        let (first_name, second_name) = state_names(rule);
        let find = |index: usize, state_name: Option<&str>| {
            let name = format!("{}.{}", tensors[index].0, state_name?);
            state.get(&name).and_then(|t| to_flat(index, t))
        };
        let first = std::array::from_fn(|index| find(index, Some(first_name)));
        let second = std::array::from_fn(|index| find(index, second_name));

        let shared =
            Arc::new(Shared { dims, features, labels, parameters: RwLock::new(parameters) });
        let helper = if threads > 1 { Helper::start(Arc::clone(&shared)) } else { None };
        Some(CpuHead {
            tensors,
            rule,
            shared,
            first,
            second,
            steps,
            work: [Some(Work::default()), Some(Work::default())],
            helper,
        })
    }

    /// Width of the representations the head reads.
    pub(crate) fn input_dim(&self) -> usize {
        self.shared.dims.input
    }

    /// One step over the examples `indices`: forward, loss, gradients, update. `given` holds
    /// their representations (`[batch, input]` row-major) when they are not cached. Returns the
    /// batch's mean loss and how many examples it classified correctly, before the update; a
    /// non-finite loss is returned without updating anything.
    pub(crate) fn step(&mut self, indices: &[usize], given: Option<&[f32]>) -> (f64, i64) {
        let batch = indices.len();
        let middle = batch / 2;
        let width = self.shared.dims.input;
        let job = |indices: &[usize], work: Work, range: std::ops::Range<usize>| {
            let mut work = work;
            if let Some(given) = given {
                work.inputs.clear();
                work.inputs.extend_from_slice(&given[range.start * width..range.end * width]);
            }
            Job { indices: indices.to_vec(), inputs_given: given.is_some(), batch, work }
        };
        let second_work = self.work[1].take().unwrap_or_default();
        let second = job(&indices[middle..], second_work, middle..batch);
        // The second half goes to the helper when there is one; `pending` is it when not.
        let pending = match &self.helper {
            Some(helper) => match helper.jobs.send(second) {
                Ok(()) => None,
                Err(mpsc::SendError(second)) => Some(second),
            },
            None => Some(second),
        };
        let mut first = job(&indices[..middle], self.work[0].take().unwrap_or_default(), 0..middle);
        let (first_loss, first_correct) = half_step(&self.shared, &mut first);
        let (second_work, second_loss, second_correct) = match pending {
            Some(mut second) => {
                let (loss, correct) = half_step(&self.shared, &mut second);
                (second.work, loss, correct)
            }
            None => match self.helper.as_ref().and_then(|helper| receive(&helper.done)) {
                Some(done) => done,
                None => {
                    // The helper is gone (it cannot be, short of a bug): do its half here.
                    self.helper = None;
                    let mut second = job(&indices[middle..], Work::default(), middle..batch);
                    let (loss, correct) = half_step(&self.shared, &mut second);
                    (second.work, loss, correct)
                }
            },
        };
        let mut first_work = first.work;
        let loss = (first_loss + second_loss) / batch as f64;
        if loss.is_finite() {
            self.steps += 1;
            let mut parameters =
                self.shared.parameters.write().unwrap_or_else(PoisonError::into_inner);
            for (index, (total, part)) in
                first_work.grads.iter_mut().zip(&second_work.grads).enumerate()
            {
                for (t, p) in total.iter_mut().zip(part) {
                    *t += p;
                }
                update(
                    self.rule,
                    &mut parameters[index],
                    total,
                    &mut self.first[index],
                    &mut self.second[index],
                    self.steps,
                );
            }
        }
        self.work = [Some(first_work), Some(second_work)];
        (loss, first_correct + second_correct)
    }

    /// Writes the parameters into their tensors, and returns the optimizer state under
    /// `Optimizer::state`'s names, with the step count.
    pub(crate) fn store(&self) -> (HashMap<String, Tensor>, i64) {
        let (first_name, second_name) = state_names(self.rule);
        let parameters = self.shared.parameters.read().unwrap_or_else(PoisonError::into_inner);
        let mut state = HashMap::new();
        tch::no_grad(|| {
            for (index, (name, tensor)) in self.tensors.iter().enumerate() {
                tensor.shallow_clone().copy_(&self.to_tensor(index, &parameters[index]));
                if let Some(first) = &self.first[index] {
                    state.insert(format!("{name}.{first_name}"), self.to_tensor(index, first));
                }
                if let (Some(second), Some(second_name)) = (&self.second[index], second_name) {
                    state.insert(format!("{name}.{second_name}"), self.to_tensor(index, second));
                }
            }
        });
        (state, self.steps)
    }

    /// A flat buffer of parameter `index`'s layout as a tensor of the parameter's shape.
    fn to_tensor(&self, index: usize, flat: &[f32]) -> Tensor {
        let tensor = Tensor::from_slice(flat);
        if index == HIDDEN_WEIGHT {
            let Dims { input, hidden, .. } = self.shared.dims;
            tensor.view([input as i64, hidden as i64]).tr().contiguous()
        } else {
            tensor.view(self.tensors[index].1.size().as_slice())
        }
    }
}

/// Forward and backward over one half of a batch: its loss sum and correct count, and its share
/// of the batch's gradients in `job.work.grads` (the logits' gradient is divided by the whole
/// batch, so the halves' gradients add up to the batch's).
fn half_step(shared: &Shared, job: &mut Job) -> (f64, i64) {
    let Dims { input, hidden, classes } = shared.dims;
    let rows = job.indices.len();
    let w = &mut job.work;
    if !job.inputs_given {
        w.inputs.clear();
        for &index in &job.indices {
            w.inputs.extend_from_slice(&shared.features[index * input..][..input]);
        }
    }
    w.labels.clear();
    w.labels.extend(job.indices.iter().map(|&index| shared.labels[index]));
    // The logits' rows padded to whole SIMD vectors, so their product has no partial ones.
    let padded = classes.next_multiple_of(16);
    w.hidden.resize(rows * hidden, 0.0);
    w.logits.resize(rows * padded, 0.0);
    w.hidden_grad.resize(rows * hidden, 0.0);
    w.final_weight_t.resize(hidden * padded, 0.0);
    let parameters = shared.parameters.read().unwrap_or_else(PoisonError::into_inner);
    let [w1t, b1, w2, b2] = &*parameters;

    // Forward: hidden = relu(inputs · w1ᵀ + b1), logits = hidden · w2ᵀ + b2.
    matmul(&w.inputs, (input, 1), w1t, hidden, &mut w.hidden);
    for row in w.hidden.chunks_exact_mut(hidden) {
        for (h, b) in row.iter_mut().zip(b1) {
            *h = (*h + b).max(0.0);
        }
    }
    for (row, column) in w.final_weight_t.chunks_exact_mut(padded).zip(0..hidden) {
        for (value, class) in row.iter_mut().zip(0..classes) {
            *value = w2[class * hidden + column];
        }
    }
    matmul(&w.hidden, (hidden, 1), &w.final_weight_t, padded, &mut w.logits);

    // Loss, accuracy, and the logits' gradient (softmax - one-hot) / batch, in place.
    let (mut loss, mut correct) = (0.0f64, 0i64);
    let scale = 1.0 / job.batch as f32;
    for (row, &label) in w.logits.chunks_exact_mut(padded).zip(&w.labels) {
        let row = &mut row[..classes];
        for (z, b) in row.iter_mut().zip(b2) {
            *z += b;
        }
        let (mut best, mut max) = (0, f32::NEG_INFINITY);
        for (class, &z) in row.iter().enumerate() {
            if z > max {
                (best, max) = (class, z);
            }
        }
        let label = label as usize;
        let label_logit = row.get(label).copied().unwrap_or(f32::NAN);
        let mut sum = 0.0;
        for z in row.iter_mut() {
            *z = (*z - max).exp();
            sum += *z;
        }
        loss -= f64::from(label_logit - max - sum.ln());
        correct += i64::from(best == label);
        for (class, z) in row.iter_mut().enumerate() {
            let target = if class == label { 1.0 } else { 0.0 };
            *z = (*z / sum - target) * scale;
        }
    }

    // Backward. Output layer: grad w2 = dzᵀ · hidden, grad b2 = Σ dz.
    let [g_w1t, g_b1, g_w2, g_b2] = &mut w.grads;
    g_w2.resize(classes * hidden, 0.0);
    matmul(&w.logits, (1, padded), &w.hidden, hidden, g_w2);
    column_sums(&w.logits, padded, g_b2);
    g_b2.truncate(classes);
    // Hidden layer: its gradient dz · w2, through relu (zero where the activation was).
    matmul(&w.logits, (padded, 1), w2, hidden, &mut w.hidden_grad);
    for (g, &h) in w.hidden_grad.iter_mut().zip(&w.hidden) {
        if h <= 0.0 {
            *g = 0.0;
        }
    }
    column_sums(&w.hidden_grad, hidden, g_b1);
    // grad w1ᵀ = inputsᵀ · hidden_grad.
    g_w1t.resize(input * hidden, 0.0);
    matmul(&w.inputs, (1, input), &w.hidden_grad, hidden, g_w1t);
    (loss, correct)
}

/// A tensor shaped like parameter `index`, as a flat buffer in [`CpuHead`]'s layout.
fn to_flat(index: usize, tensor: &Tensor) -> Option<Vec<f32>> {
    let tensor = if index == HIDDEN_WEIGHT { tensor.tr() } else { tensor.shallow_clone() };
    Vec::<f32>::try_from(tensor.to_kind(Kind::Float).contiguous().view(-1)).ok()
}

/// The sums of the columns of a row-major matrix `cols` wide, into `sums`.
fn column_sums(matrix: &[f32], cols: usize, sums: &mut Vec<f32>) {
    sums.clear();
    sums.resize(cols, 0.0);
    for row in matrix.chunks_exact(cols) {
        for (sum, value) in sums.iter_mut().zip(row) {
            *sum += value;
        }
    }
}

/// One update of `parameter` by `grad` (consumed: weight decay is added to it in place), with
/// the same rules and operation order as `optim::update`.
fn update(
    rule: OptimizerConfig,
    parameter: &mut [f32],
    grad: &mut [f32],
    first: &mut Option<Vec<f32>>,
    second: &mut Option<Vec<f32>>,
    step: i64,
) {
    let weight_decay = match rule {
        OptimizerConfig::Sgd { weight_decay, .. } | OptimizerConfig::Adam { weight_decay, .. } => {
            weight_decay as f32
        }
    };
    if weight_decay != 0.0 {
        for (g, p) in grad.iter_mut().zip(parameter.iter()) {
            *g += p * weight_decay;
        }
    }
    match rule {
        OptimizerConfig::Sgd { lr, momentum, .. } => {
            let lr = lr as f32;
            if momentum == 0.0 {
                for (p, g) in parameter.iter_mut().zip(grad.iter()) {
                    *p -= g * lr;
                }
                return;
            }
            let momentum = momentum as f32;
            match first {
                Some(buffer) => {
                    for (b, g) in buffer.iter_mut().zip(grad.iter()) {
                        *b = *b * momentum + g;
                    }
                }
                None => *first = Some(grad.to_vec()),
            }
            for (p, b) in parameter.iter_mut().zip(first.iter().flatten()) {
                *p -= b * lr;
            }
        }
        OptimizerConfig::Adam { lr, beta1, beta2, eps, .. } => {
            let exp_avg = first.get_or_insert_with(|| vec![0.0; grad.len()]);
            let exp_avg_sq = second.get_or_insert_with(|| vec![0.0; grad.len()]);
            let bias1 = 1.0 - beta1.powi(step as i32);
            let bias2_sqrt = (1.0 - beta2.powi(step as i32)).sqrt() as f32;
            let step_size = (lr / bias1) as f32;
            let (beta1, beta2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
            for (((p, g), m), v) in
                parameter.iter_mut().zip(grad.iter()).zip(exp_avg).zip(exp_avg_sq)
            {
                *m = *m * beta1 + g * (1.0 - beta1);
                *v = *v * beta2 + g * g * (1.0 - beta2);
                *p -= *m / (v.sqrt() / bias2_sqrt + eps) * step_size;
            }
        }
    }
}

/// The frozen part: images to representations, without gradients.
pub(crate) type Frozen<'a> = &'a dyn Fn(&Tensor) -> Tensor;

/// Where the head's training inputs come from.
pub(crate) enum HeadInputs<'a> {
    /// Cached representations, `[N, input]` row-major.
    Cached(Vec<f32>),
    /// Computed per batch: `frozen` (the frozen part, without gradients) over rows of `images`.
    PerBatch {
        /// The training images.
        images: &'a Tensor,
        /// Images to representations.
        frozen: Frozen<'a>,
    },
}

/// [`Steps`] by [`CpuHead`]: the optimizer's tensors and state are written back after every
/// epoch.
pub(crate) struct CpuHeadSteps<'a> {
    head: CpuHead,
    /// The images and frozen part, when representations are computed per batch.
    per_batch: Option<(&'a Tensor, Frozen<'a>)>,
    optimizer: &'a mut Optimizer,
    /// A batch's images and representations, when representations are computed per batch.
    batch_images: Option<Tensor>,
    batch_inputs: Vec<f32>,
}

impl<'a> CpuHeadSteps<'a> {
    /// Steps for the head whose tensors `optimizer` updates (its only group, with `rule`), over
    /// `inputs` and the int64 `labels`, on up to `threads` threads. `None` when that is not a
    /// float32 `RefineHead` on the CPU or the inputs do not fit it (per-batch representations
    /// are checked on the first image).
    pub(crate) fn new(
        optimizer: &'a mut Optimizer,
        rule: OptimizerConfig,
        inputs: HeadInputs<'a>,
        labels: &Tensor,
        threads: usize,
    ) -> Option<CpuHeadSteps<'a>> {
        let labels = Vec::<i64>::try_from(labels.to_kind(Kind::Int64)).ok()?;
        let (features, per_batch) = match inputs {
            HeadInputs::Cached(features) => (features, None),
            HeadInputs::PerBatch { images, frozen } => (Vec::new(), Some((images, frozen))),
        };
        let head = CpuHead::new(
            &optimizer.parameters(),
            rule,
            optimizer.state(),
            features,
            labels,
            threads,
        )?;
        if let Some((images, frozen)) = per_batch {
            let width = frozen(&images.narrow(0, 0, 1)).numel();
            if width != head.input_dim() {
                return None;
            }
        }
        Some(CpuHeadSteps {
            head,
            per_batch,
            optimizer,
            batch_images: None,
            batch_inputs: Vec::new(),
        })
    }
}

impl Steps for CpuHeadSteps<'_> {
    fn step(&mut self, indices: &[usize]) -> (f64, i64) {
        let given = match self.per_batch {
            Some((images, frozen)) => {
                let batch = gather_rows(images, indices, &mut self.batch_images);
                let representations = frozen(&batch).to_kind(Kind::Float).contiguous();
                let len = representations.numel();
                self.batch_inputs.resize(len, 0.0);
                representations.copy_data(&mut self.batch_inputs, len);
                Some(self.batch_inputs.as_slice())
            }
            None => None,
        };
        self.head.step(indices, given)
    }

    fn finish_epoch(&mut self) -> &Optimizer {
        let (state, steps) = self.head.store();
        self.optimizer.restore(|name| state.get(name).map(Tensor::shallow_clone), steps);
        self.optimizer
    }
}

/// Rows `indices` of `source`, copied one by one into `buffer` (made, or made larger, on
/// demand) and returned as a view of it.
///
/// Not `index_select`: over a batch of images that is one of libtorch's parallel operators, and
/// its worker threads then spin for milliseconds, taking a core from the base's own CPU passes
/// that run next (a third of a frozen-forward step's time on a 2-core machine). Each row's copy
/// is too small for libtorch to parallelise.
fn gather_rows(source: &Tensor, indices: &[usize], buffer: &mut Option<Tensor>) -> Tensor {
    let rows = indices.len() as i64;
    if buffer.as_ref().is_some_and(|buffer| buffer.size()[0] < rows) {
        *buffer = None;
    }
    let buffer = buffer.get_or_insert_with(|| {
        let mut size = source.size();
        size[0] = rows;
        Tensor::empty(size, (source.kind(), source.device()))
    });
    let batch = buffer.narrow(0, 0, rows);
    tch::no_grad(|| {
        for (row, &index) in indices.iter().enumerate() {
            batch.get(row as i64).copy_(&source.get(index as i64));
        }
    });
    batch
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use mnist_io::{BatchPlan, SplitMix64};
    use models::{HeadConfig, RefineHead};
    use tch::nn::VarStore;
    use tch::{Device, Tensor};

    use super::{CpuHeadSteps, HeadInputs};
    use crate::checkpoint::named_variables;
    use crate::fit::{AutogradSteps, Inputs, Steps};
    use crate::optim::{Optimizer, OptimizerConfig};

    const EXAMPLES: usize = 600;
    const CLASSES: usize = 10;

    /// Representations as the base makes them (non-negative, about half zero after relu) and
    /// labels that depend on them, so the head has something to learn.
    fn representations(seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = SplitMix64::new(seed);
        let mut features = Vec::with_capacity(EXAMPLES * 256);
        let mut labels = Vec::with_capacity(EXAMPLES);
        for _ in 0..EXAMPLES {
            let label = (rng.next_u64() % CLASSES as u64) as usize;
            for unit in 0..256 {
                let noise = (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0;
                let signal = if unit % CLASSES == label { 1.5 } else { 0.0 };
                features.push((noise + signal).max(0.0));
            }
            labels.push(label as i64);
        }
        (features, labels)
    }

    /// A head with fixed initial weights (uniform in ±1/√fan_in, drawn from `seed`), and its
    /// tensors under the names `refine` gives them.
    fn seeded_head(seed: u64) -> (VarStore, RefineHead, Vec<(String, Tensor)>) {
        let store = VarStore::new(Device::Cpu);
        let config = HeadConfig { n_classes: CLASSES as i64, ..HeadConfig::default() };
        let head = RefineHead::new(&store.root(), config);
        let mut rng = SplitMix64::new(seed);
        let named: Vec<(String, Tensor)> = named_variables(&store)
            .into_iter()
            .map(|(name, tensor)| (format!("head.{name}"), tensor))
            .collect();
        tch::no_grad(|| {
            for (_, tensor) in &named {
                let size = tensor.size();
                let bound = 1.0 / (*size.last().unwrap_or(&1) as f32).sqrt();
                let values: Vec<f32> = (0..tensor.numel())
                    .map(|_| ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * bound)
                    .collect();
                tensor.shallow_clone().copy_(&Tensor::from_slice(&values).view(size.as_slice()));
            }
        });
        (store, head, named)
    }

    /// Trains for two epochs of batches of 64 with `steps`; the loss and correct count of
    /// every step.
    fn train(steps: &mut dyn Steps) -> Vec<(f64, i64)> {
        let mut outcomes = Vec::new();
        for epoch in 0..2 {
            let plan = BatchPlan::shuffled(EXAMPLES, NonZeroUsize::new(64).unwrap(), epoch, true);
            outcomes.extend(plan.iter().map(|indices| steps.step(indices)));
            steps.finish_epoch();
        }
        outcomes
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert!(a.allclose(b, 1e-4, 1e-6, false), "{what}: {a} vs {b}");
    }

    /// Every rule: the CPU step's losses, accuracy, weights and optimizer state follow
    /// autograd's (to float32 rounding: sums run in another order).
    #[test]
    fn the_cpu_step_follows_autograd() {
        let (features, labels) = representations(3);
        let feature_tensor = Tensor::from_slice(&features).view([EXAMPLES as i64, 256]);
        let label_tensor = Tensor::from_slice(&labels);
        let rules = [
            OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
            OptimizerConfig::Sgd { lr: 0.05, momentum: 0.0, weight_decay: 1e-3 },
            OptimizerConfig::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-4,
            },
        ];
        for rule in rules {
            let (reference_store, head, named) = seeded_head(11);
            let forward = |xs: &Tensor, _train: bool| head.forward(xs);
            let data = Inputs {
                train: &feature_tensor,
                train_labels: &label_tensor,
                test: &feature_tensor,
                test_labels: &label_tensor,
                n_classes: CLASSES,
            };
            let (cpu_store, _, cpu_named) = seeded_head(11);

            let mut reference_optimizer = Optimizer::new(vec![(rule, named)]);
            let reference = train(&mut AutogradSteps {
                data: &data,
                forward: &forward,
                optimizer: &mut reference_optimizer,
                device: Device::Cpu,
            });
            let mut cpu_optimizer = Optimizer::new(vec![(rule, cpu_named)]);
            let mut steps = CpuHeadSteps::new(
                &mut cpu_optimizer,
                rule,
                HeadInputs::Cached(features.clone()),
                &label_tensor,
                2,
            )
            .expect("a RefineHead on the CPU takes the CPU step");
            let cpu = train(&mut steps);
            drop(steps);

            assert_eq!(reference.len(), cpu.len());
            for (step, ((loss, correct), (cpu_loss, cpu_correct))) in
                reference.iter().zip(&cpu).enumerate()
            {
                assert!(
                    (loss - cpu_loss).abs() < 1e-4 * (1.0 + loss.abs()),
                    "{rule:?} step {step}: loss {loss} vs {cpu_loss}"
                );
                assert!(
                    (correct - cpu_correct).abs() <= 1,
                    "{rule:?} step {step}: {correct} vs {cpu_correct} correct"
                );
            }
            assert!(cpu.last().unwrap().0 < cpu[0].0, "{rule:?}: the loss went down");
            for ((name, reference), (_, cpu)) in
                named_variables(&reference_store).iter().zip(named_variables(&cpu_store))
            {
                assert_close(reference, &cpu, &format!("{rule:?} {name}"));
            }
            let (reference_state, reference_steps) = reference_optimizer.state();
            let (cpu_state, cpu_steps) = cpu_optimizer.state();
            assert_eq!(reference_steps, cpu_steps);
            assert_eq!(reference_state.len(), cpu_state.len(), "{rule:?}: state tensors");
            for ((name, reference), (cpu_name, cpu)) in reference_state.iter().zip(&cpu_state) {
                assert_eq!(name, cpu_name);
                assert_close(reference, cpu, &format!("{rule:?} {name}"));
            }
        }
    }

    /// The batch is split in two halves either way, so a second thread changes no bit.
    #[test]
    fn one_thread_and_two_give_identical_weights() {
        let (features, labels) = representations(5);
        let label_tensor = Tensor::from_slice(&labels);
        let rule = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
        let runs: Vec<_> = [1, 2]
            .into_iter()
            .map(|threads| {
                let (store, _, named) = seeded_head(13);
                let mut optimizer = Optimizer::new(vec![(rule, named)]);
                let inputs = HeadInputs::Cached(features.clone());
                let outcomes = train(
                    &mut CpuHeadSteps::new(&mut optimizer, rule, inputs, &label_tensor, threads)
                        .unwrap(),
                );
                let weights: Vec<Vec<u8>> = named_variables(&store)
                    .iter()
                    .map(|(_, t)| crate::fingerprint::tensor_bytes(t))
                    .collect();
                (outcomes, weights)
            })
            .collect();
        assert_eq!(runs[0], runs[1]);
    }

    #[test]
    fn gathered_rows_equal_index_select_whatever_the_batch_sizes() {
        let images = Tensor::rand([50, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let mut buffer = None;
        // A batch, a smaller one (the epoch's last), then a larger one again.
        for indices in [vec![3, 49, 0, 3, 17], vec![8, 1], vec![0, 1, 2, 40, 41, 42, 43, 9]] {
            let gathered = super::gather_rows(&images, &indices, &mut buffer);
            let expected = images.index_select(0, &crate::fit::index_tensor(&indices, Device::Cpu));
            assert!(gathered.equal(&expected), "{indices:?}");
        }
    }
}
