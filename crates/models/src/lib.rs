//! The models: a base CNN that returns its log-probabilities and 256-d representation, and a
//! small refine head trained on that representation.
