//! The accuracy floors on real MNIST (CI fetches it; skipped with a message when absent):
//! a base pretrained 2 epochs reaches 98.3%, a head refined 3 epochs over it 98.7%, and every
//! base tensor is bit-identical afterwards; a bf16 frozen forward stays within 0.3 points.

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

    // The same base, frozen part in bf16: the accuracy cost stays under 0.3 points.
    let base = dir.path().join("base.safetensors").to_string_lossy().into_owned();
    let bf16_out = dir.path().join("bf16").to_string_lossy().into_owned();
    let args = [
        "refine",
        "--base",
        &base,
        "--data-dir",
        &data_dir,
        "--out",
        &bf16_out,
        "--epochs",
        "3",
        "--precision",
        "bf16",
        "--json",
        "-q",
    ];
    let output = run_cli(&workspace_root(), &args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let low = json_stdout(&output);
    let low_accuracy = low["test_accuracy"].as_f64().unwrap();
    assert!((low_accuracy - refined).abs() <= 0.003, "bf16 {low_accuracy} vs f32 {refined}");
    assert_eq!(low["base_unchanged"], true);
    assert_eq!(low["config"]["precision"], "bf16");
    eprintln!(
        "MNIST bf16: refined head {low_accuracy:.4}, extract_s {}",
        low["timings"]["extract_s"]
    );
}
