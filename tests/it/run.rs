//! `run` end to end on a small dataset written by the test, and the binary in a clean
//! environment.

use std::process::Command;

use refine_tests::{cli_binary, run_cli, synthetic, write_dataset};

use crate::json_stdout;

#[test]
fn run_trains_reports_and_proves_the_base_frozen() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/mnist"), &synthetic(600, 1), &synthetic(200, 2));
    let args = ["run", "--pretrain-epochs", "2", "--epochs", "3", "--json", "--threads", "2"];
    let output = run_cli(dir.path(), &args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = json_stdout(&output);
    assert_eq!(report["base_unchanged"], true);
    assert_eq!(report["head_changed"], true);
    assert_eq!(report["base_fingerprint_before"], report["base_fingerprint_after"]);
    assert_eq!(report["base_fingerprint_before"].as_str().unwrap().len(), 64);
    assert!(report["test_accuracy"].as_f64().unwrap() > 0.9, "{}", report["test_accuracy"]);
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    for (index, epoch) in epochs.iter().enumerate() {
        assert_eq!(epoch["epoch"], index + 1);
        assert!(epoch["train_loss"].as_f64().unwrap().is_finite());
        assert!(epoch["seconds"].as_f64().unwrap() > 0.0);
        assert!((0.0..=1.0).contains(&epoch["test_accuracy"].as_f64().unwrap()));
    }
    let timings = &report["timings"];
    for key in ["load_s", "pretrain_s", "extract_s", "refine_s", "eval_s", "total_s"] {
        assert!(timings[key].as_f64().unwrap() >= 0.0, "timings.{key}");
    }
    assert!(timings["pretrain_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report["trained"],
        serde_json::json!([
            "head.final.bias",
            "head.final.weight",
            "head.hidden.bias",
            "head.hidden.weight"
        ])
    );
    assert_eq!(report["frozen_tensors"], 8);
    assert_eq!(report["confusion_matrix"].as_array().unwrap().len(), 10);
    let out = dir.path().join("runs/mnist");
    for file in ["base.safetensors", "head.safetensors", "report.json", "metrics.jsonl"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk, report);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let phases: Vec<String> = lines
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["phase"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(phases, ["pretrain", "pretrain", "refine", "refine", "refine"]);

    // Same settings, same folder: the base is reused, and says so.
    let again = run_cli(dir.path(), &["run", "--pretrain-epochs", "2", "--epochs", "1", "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("reusing the pretrained base"));
    let report = json_stdout(&again);
    assert_eq!(report["base"]["source"], "reused");
    assert_eq!(report["timings"]["pretrain_s"], 0.0);
}

#[test]
fn dry_run_prints_the_freeze_report_and_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/mnist"), &synthetic(20, 3), &synthetic(10, 4));
    let output =
        run_cli(dir.path(), &["run", "--dry-run", "--train-from", "representation", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan = json_stdout(&output);
    let roles: Vec<(String, bool, u64)> = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["in_optimizer"].as_bool().unwrap(),
                t["optimizer_state_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(roles.contains(&("base.conv1.weight".into(), false, 0)));
    assert!(roles.contains(&("base.representation.weight".into(), true, 256 * 3136 * 4)));
    assert!(roles.contains(&("head.final.bias".into(), true, 40)));
    assert!(!dir.path().join("runs").exists(), "a dry run wrote outputs");
}

#[test]
fn the_binary_runs_from_anywhere_with_a_clean_environment() {
    let output = Command::new(cli_binary())
        .arg("--help")
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: refine-cli"));
}
