//! End-to-end tests: the `refine-cli` binary on datasets the tests write, its error cases, a
//! killed run that resumes, `predict` on a drawn PNG, and the accuracy floors on real MNIST.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod errors;
mod mnist;
mod predict;
mod resume;
mod run;

use serde_json::Value;

/// Parses a command's stdout as one JSON document.
fn json_stdout(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
