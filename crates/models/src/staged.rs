//! The trait through which the trainer sees a base network.

use std::ops::Range;

use tch::{Kind, Tensor};

/// A base network as an ordered list of named stages ending with the representation a head is
/// trained on, plus the base's own classifier over that representation.
///
/// Each stage's variables live under the `nn::Path` of the same name (`conv1.weight`, ...), so
/// the trainer can tell frozen tensors from trainable ones by name alone.
pub trait StagedBase {
    /// Names what the stages compute, with a revision that changes whenever the same weights
    /// would give other outputs. Feature caches and resumable runs are keyed by it.
    fn architecture(&self) -> &'static str;

    /// Stage names in forward order; the last one outputs the representation.
    fn stage_names(&self) -> &[&'static str];

    /// Runs the stages in `stages` (indices into [`stage_names`](Self::stage_names)) on `xs`,
    /// which must be the input of stage `stages.start`. An empty range returns `xs` unchanged.
    /// `train` selects training-mode behaviour where a stage has any.
    fn forward_stages(&self, xs: &Tensor, stages: Range<usize>, train: bool) -> Tensor;

    /// The base's own classifier: log-probabilities from a representation.
    fn classify(&self, representation: &Tensor) -> Tensor;

    /// A detached copy with every weight converted to `kind` (e.g. bf16), for running the frozen
    /// part at lower precision; its stages take and return tensors of that kind. `None` when
    /// the base cannot make one (the default).
    fn inference_copy(&self, kind: Kind) -> Option<Box<dyn StagedBase>> {
        let _ = kind;
        None
    }
}
