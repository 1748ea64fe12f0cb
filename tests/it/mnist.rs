//! The accuracy floors on real MNIST (CI fetches it; skipped with a message when absent):
//! a base pretrained 2 epochs reaches 98.3%, a head refined 3 epochs over it 98.7%, and every
//! base tensor is bit-identical afterwards.

use refine_tests::{real_mnist, run_cli, workspace_root};

use crate::json_stdout;

#[test]
fn pretrain_then_refine_meets_the_accuracy_floors() {
    let Some(data) = real_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = data.to_string_lossy().into_owned();
    let output = run_cli(
        &workspace_root(),
        &[
            "run",
            "--data-dir",
            &data_dir,
            "--out",
            &dir.path().to_string_lossy(),
            "--epochs",
            "3",
            "--json",
            "-q",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = json_stdout(&output);
    let pretrained = report["base"]["pretrain_test_accuracy"].as_f64().unwrap();
    assert!(pretrained >= 0.983, "pretrained base: {pretrained}");
    let refined = report["test_accuracy"].as_f64().unwrap();
    assert!(refined >= 0.987, "refined head: {refined}");
    assert_eq!(report["base_unchanged"], true);
    assert_eq!(report["head_changed"], true);
    assert_eq!(report["dataset"]["train_examples"], 60_000);
    eprintln!(
        "MNIST: pretrained base {pretrained:.4}, refined head {refined:.4}, timings {}",
        report["timings"]
    );
}
