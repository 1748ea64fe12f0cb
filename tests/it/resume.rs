//! A run killed (SIGKILL) after finishing at least one epoch resumes on rerun and ends with the
//! same weights as an uninterrupted run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use refine_tests::{cli_binary, run_cli, synthetic, write_dataset};

use crate::json_stdout;

const EPOCHS: &str = "12";

fn args(out: &str) -> Vec<&str> {
    // The naive feature mode makes each epoch slow enough to be killed in the middle of the run.
    vec![
        "run",
        "--pretrain-epochs",
        "1",
        "--epochs",
        EPOCHS,
        "--feature-cache",
        "off",
        "--out",
        out,
        "--json",
        "--threads",
        "1",
    ]
}

fn refine_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("\"phase\":\"refine\""))
        .count()
}

fn head_fingerprint(dir: &std::path::Path, out: &str) -> serde_json::Value {
    let output = run_cli(dir, &["inspect", &format!("{out}/head.safetensors"), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    json_stdout(&output)["fingerprint"].clone()
}

#[test]
fn a_killed_run_resumes_and_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/mnist"), &synthetic(1500, 11), &synthetic(300, 12));

    let mut child = Command::new(cli_binary())
        .args(args("killed"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("killed/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while refine_lines(&metrics) < 1 {
        assert!(Instant::now() < deadline, "no refine epoch finished in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before_kill = refine_lines(&metrics);
    assert!(done_before_kill < EPOCHS.parse().unwrap(), "the run finished before the kill");

    let resumed = run_cli(dir.path(), &args("killed"));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("reusing the pretrained base"), "{stderr}");
    assert!(stderr.contains("resuming: "), "{stderr}");
    let report = json_stdout(&resumed);
    assert!(report["resumed_epochs"].as_u64().unwrap() >= 1);
    assert_eq!(report["epochs"].as_array().unwrap().len(), 12);
    assert_eq!(refine_lines(&metrics), 12);

    let uninterrupted = run_cli(dir.path(), &args("whole"));
    assert!(uninterrupted.status.success(), "{}", String::from_utf8_lossy(&uninterrupted.stderr));
    assert_eq!(json_stdout(&uninterrupted)["resumed_epochs"], 0);
    assert_eq!(head_fingerprint(dir.path(), "killed"), head_fingerprint(dir.path(), "whole"));
}
