//! The training loop and evaluation, shared by pretraining and refining.

use std::num::NonZeroUsize;
use std::time::Instant;

use mnist_io::BatchPlan;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::optim::{Optimizer, OptimizerConfig};

/// Knobs shared by every training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step; a final short batch is dropped, as in the seed.
    pub batch_size: NonZeroUsize,
    /// The update rule.
    pub optimizer: OptimizerConfig,
    /// Seeds the batch order of every epoch (and, in the CLI, the initial weights).
    pub seed: u64,
    /// Where tensors live and compute runs.
    #[serde(serialize_with = "serialize_device")]
    pub device: Device,
}

fn serialize_device<S: serde::Serializer>(
    device: &Device,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    })
}

/// What happens during a long-running call, for progress displays.
#[derive(Clone, Debug)]
pub enum Event {
    /// A phase begins with this many steps (batches).
    PhaseStarted {
        /// A short label: `extract`, `pretrain 1/2`, `refine 3/10`, `evaluate`.
        label: String,
        /// Steps the phase will take.
        steps: u64,
    },
    /// One more step of the current phase is done.
    Step,
    /// The current phase is done.
    PhaseFinished,
    /// An epoch is done, with its metrics.
    Epoch(EpochMetrics),
    /// A resumable run picked up from a saved state holding these finished epochs.
    Resumed {
        /// The metrics of the epochs already done.
        epochs: Vec<EpochMetrics>,
    },
}

/// The metrics of one epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (weights changing as it goes).
    pub train_accuracy: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the epoch's training steps (test evaluation excluded).
    pub seconds: f64,
}

/// Loss, accuracy, per-class accuracy and confusion matrix over a dataset.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Mean negative log-likelihood.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Accuracy of each true class (0 for a class with no examples).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// A batch's input and labels to log-probabilities (the trainable model, frozen part included
/// where it runs per batch); `bool` is training mode.
pub(crate) type Forward<'a> = dyn Fn(&Tensor, bool) -> Tensor + 'a;

/// The data a loop runs over: inputs (images or cached features) and int64 labels.
pub(crate) struct Inputs<'a> {
    pub train: &'a Tensor,
    pub train_labels: &'a Tensor,
    pub test: &'a Tensor,
    pub test_labels: &'a Tensor,
    pub n_classes: usize,
}

/// The batch size used for evaluation and feature extraction: large enough to amortise
/// per-call overhead and for the base's CPU kernels to share a batch out to threads (libtorch's
/// own worker threads spin for a while after each of its parallel operators, so a kernel's
/// second thread pays only over a long enough batch); small enough to keep memory low (a
/// batch's activations are a few tens of MB).
pub(crate) const EVAL_BATCH: usize = 1024;

/// The seed of epoch `epoch`'s batch order.
pub(crate) fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_add(epoch as u64)
}

/// How a training loop takes its steps: autograd over libtorch operators ([`AutogradSteps`]), or
/// the head's own CPU step ([`crate::cpu_head::CpuHeadSteps`]).
pub(crate) trait Steps {
    /// One step over the training examples at `indices`. Returns the batch's mean loss and how
    /// many examples it classified correctly, both before the update; when the loss is not
    /// finite, nothing is updated.
    fn step(&mut self, indices: &[usize]) -> (f64, i64);

    /// Brings the model's tensors and the optimizer up to date with the steps taken; called
    /// after every epoch, before evaluation and checkpoints.
    fn finish_epoch(&mut self) -> &Optimizer;
}

/// Steps through libtorch: `forward` in training mode, its loss differentiated by autograd.
pub(crate) struct AutogradSteps<'a> {
    /// The training inputs and labels.
    pub data: &'a Inputs<'a>,
    /// The trainable model.
    pub forward: &'a Forward<'a>,
    /// Updates the trainable tensors.
    pub optimizer: &'a mut Optimizer,
    /// Where the inputs are.
    pub device: Device,
}

impl Steps for AutogradSteps<'_> {
    fn step(&mut self, indices: &[usize]) -> (f64, i64) {
        let index = index_tensor(indices, self.device);
        let xs = self.data.train.index_select(0, &index);
        let ys = self.data.train_labels.index_select(0, &index);
        let log_probs = (self.forward)(&xs, true);
        let loss = log_probs.nll_loss(&ys);
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return (loss_value, 0);
        }
        self.optimizer.step(&loss);
        let correct = log_probs.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64).int64_value(&[]);
        (loss_value, correct)
    }

    fn finish_epoch(&mut self) -> &Optimizer {
        self.optimizer
    }
}

/// Trains from epoch `start_epoch` (0-based count of epochs already done) to `config.epochs`.
/// After each epoch, `checkpoint` is called with the metrics so far, so a killed run loses at
/// most the epoch in progress.
// Internal: every argument is a distinct role the two callers fill differently.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_epochs(
    data: &Inputs<'_>,
    forward: &Forward<'_>,
    steps: &mut dyn Steps,
    config: &FitConfig,
    phase: &str,
    mut metrics: Vec<EpochMetrics>,
    checkpoint: &mut dyn FnMut(&[EpochMetrics], &Optimizer) -> Result<()>,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<EpochMetrics>> {
    let n_train = data.train.size()[0] as usize;
    if n_train < config.batch_size.get() {
        return Err(Error::BatchLargerThanDataset {
            examples: n_train,
            batch_size: config.batch_size.get(),
        });
    }
    for epoch in metrics.len() + 1..=config.epochs {
        let plan =
            BatchPlan::shuffled(n_train, config.batch_size, epoch_seed(config.seed, epoch), true);
        events(Event::PhaseStarted {
            label: format!("{phase} {epoch}/{}", config.epochs),
            steps: plan.len() as u64,
        });
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        for (step, indices) in plan.iter().enumerate() {
            let (loss, batch_correct) = steps.step(indices);
            if !loss.is_finite() {
                return Err(Error::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    loss,
                    lr: config.optimizer.lr(),
                });
            }
            loss_sum += loss;
            correct += batch_correct;
            seen += indices.len();
            events(Event::Step);
        }
        let optimizer = steps.finish_epoch();
        let seconds = started.elapsed().as_secs_f64();
        events(Event::PhaseFinished);
        let test = evaluate(data.test, data.test_labels, forward, data.n_classes, config.device);
        let epoch_metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / plan.len().max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            seconds,
        };
        tracing::info!(
            phase,
            epoch,
            train_loss = epoch_metrics.train_loss,
            test_accuracy = epoch_metrics.test_accuracy,
            seconds,
            "epoch done"
        );
        metrics.push(epoch_metrics.clone());
        checkpoint(&metrics, optimizer)?;
        events(Event::Epoch(epoch_metrics));
    }
    Ok(metrics)
}

/// Evaluates `forward` (in eval mode, without gradients) over `inputs` in order.
pub(crate) fn evaluate(
    inputs: &Tensor,
    labels: &Tensor,
    forward: &Forward<'_>,
    n_classes: usize,
    device: Device,
) -> Evaluation {
    let n = inputs.size()[0] as usize;
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    let mut loss_sum = 0.0;
    tch::no_grad(|| {
        for indices in
            BatchPlan::in_order(n, NonZeroUsize::new(EVAL_BATCH).unwrap_or(NonZeroUsize::MIN))
                .iter()
        {
            let index = index_tensor(indices, device);
            let log_probs = forward(&inputs.index_select(0, &index), false);
            let ys = labels.index_select(0, &index);
            loss_sum += log_probs.nll_loss(&ys).double_value(&[]) * indices.len() as f64;
            let predicted =
                Vec::<i64>::try_from(log_probs.argmax(-1, false).to_device(Device::Cpu))
                    .unwrap_or_default();
            let truth = Vec::<i64>::try_from(ys.to_device(Device::Cpu)).unwrap_or_default();
            for (&t, &p) in truth.iter().zip(&predicted) {
                if let Some(cell) =
                    confusion.get_mut(t as usize).and_then(|row| row.get_mut(p as usize))
                {
                    *cell += 1;
                }
            }
        }
    });
    let correct: u64 = (0..n_classes).map(|class| confusion[class][class]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(class, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 { 0.0 } else { row[class] as f64 / total as f64 }
        })
        .collect();
    Evaluation {
        loss: loss_sum / n.max(1) as f64,
        accuracy: correct as f64 / n.max(1) as f64,
        per_class_accuracy,
        confusion,
    }
}

/// Example indices as an int64 tensor on `device`.
pub(crate) fn index_tensor(indices: &[usize], device: Device) -> Tensor {
    let indices: Vec<i64> = indices.iter().map(|&index| index as i64).collect();
    Tensor::from_slice(&indices).to_device(device)
}
