//! Every user error: a one-line cause, a hint where one helps, a non-zero exit, never a panic.

use std::path::Path;

use refine_tests::{run_cli, synthetic, write_dataset};

/// Runs the CLI expecting failure; returns stderr after checking the exit code and that
/// nothing panicked.
fn fails(cwd: &Path, args: &[&str]) -> String {
    let output = run_cli(cwd, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{args:?} exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}:\n{stderr}");
    stderr
}

/// A folder with a tiny dataset and a base + head trained on it.
fn trained() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/mnist"), &synthetic(256, 5), &synthetic(32, 6));
    let output = run_cli(dir.path(), &["run", "--pretrain-epochs", "1", "--epochs", "1", "-q"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    dir
}

#[test]
fn a_missing_data_folder_hints_at_fetch_data() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = fails(dir.path(), &["run", "--dataset", "fashion-mnist"]);
    assert!(stderr.contains("data folder data/fashion-mnist not found"), "{stderr}");
    assert!(
        stderr.contains("hint: run `cargo xtask fetch-data --dataset fashion-mnist`"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_idx_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/mnist");
    write_dataset(&data, &synthetic(8, 7), &synthetic(8, 8));
    let labels = data.join("t10k-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).unwrap();
    bytes.pop();
    std::fs::write(&labels, bytes).unwrap();
    let stderr = fails(dir.path(), &["run"]);
    assert!(
        stderr.contains(
            "t10k-labels-idx1-ubyte: header declares [8] = 8 data bytes, but the file holds 7"
        ),
        "{stderr}"
    );
}

#[test]
fn bad_checkpoints_are_refused_with_their_cause() {
    let dir = trained();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    let stderr = fails(dir.path(), &["eval", "--base", "garbage.safetensors"]);
    assert!(stderr.contains("not a valid safetensors checkpoint"), "{stderr}");

    let base = std::fs::read(dir.path().join("runs/mnist/base.safetensors")).unwrap();
    std::fs::write(dir.path().join("truncated.safetensors"), &base[..base.len() - 100]).unwrap();
    let stderr = fails(dir.path(), &["eval", "--base", "truncated.safetensors"]);
    assert!(stderr.contains("not a valid safetensors checkpoint"), "{stderr}");

    let stderr = fails(dir.path(), &["eval", "--base", "runs/mnist/head.safetensors"]);
    assert!(stderr.contains("is a head checkpoint, expected a base checkpoint"), "{stderr}");
}

#[test]
fn a_base_from_before_average_pooling_is_refused() {
    let dir = trained();
    // The base as an earlier refine wrote it: no architecture revision in the safetensors
    // header (an 8-byte little-endian length, the JSON header, then the tensor bytes).
    let bytes = std::fs::read(dir.path().join("runs/mnist/base.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let metadata = header["__metadata__"].as_object_mut().unwrap();
    assert!(metadata.remove("architecture").is_some());
    let header = serde_json::to_vec(&header).unwrap();
    let mut old = (header.len() as u64).to_le_bytes().to_vec();
    old.extend_from_slice(&header);
    old.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(dir.path().join("old-base.safetensors"), old).unwrap();
    let stderr = fails(dir.path(), &["refine", "--base", "old-base.safetensors"]);
    assert!(
        stderr.contains(
            "this base was saved for architecture \"base-cnn/1 (recorded none)\", but this build \
             computes \"base-cnn/2\"; pretrain a new base (refine-cli pretrain)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_head_bound_to_another_base_is_refused_unless_overridden() {
    let dir = trained();
    let other =
        run_cli(dir.path(), &["pretrain", "--epochs", "1", "--seed", "9", "--out", "other", "-q"]);
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let args =
        ["eval", "--base", "other/base.safetensors", "--head", "runs/mnist/head.safetensors"];
    let stderr = fails(dir.path(), &args);
    assert!(stderr.contains("this head was trained on base"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    let mut overridden = args.to_vec();
    overridden.push("--allow-other-base");
    assert!(run_cli(dir.path(), &overridden).status.success());
}

#[test]
fn a_training_set_smaller_than_a_batch_is_refused() {
    let dir = trained();
    let stderr =
        fails(dir.path(), &["run", "--random-base", "--batch-size", "1000", "--out", "big"]);
    assert!(
        stderr.contains("the training set has 256 examples, fewer than one batch of 1000"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: lower --batch-size"), "{stderr}");
}

#[test]
fn an_unknown_split_layer_lists_the_known_ones() {
    let dir = trained();
    let stderr = fails(dir.path(), &["run", "--train-from", "conv7"]);
    assert!(stderr.contains("unknown layer \"conv7\""), "{stderr}");
    assert!(stderr.contains("conv1, conv2, representation"), "{stderr}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        eprintln!("skipping: this machine has a CUDA GPU");
        return;
    }
    let dir = trained();
    let stderr = fails(dir.path(), &["run", "--device", "cuda"]);
    assert!(stderr.contains("no CUDA GPU is available"), "{stderr}");
    assert!(stderr.contains("hint: use --device cpu"), "{stderr}");
}

#[test]
fn an_unwritable_output_folder_is_reported() {
    let dir = trained();
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let stderr = fails(dir.path(), &["run", "--out", "a-file/out", "--random-base"]);
    assert!(stderr.contains("cannot write to the output folder a-file/out"), "{stderr}");
    assert!(stderr.contains("hint: choose another --out"), "{stderr}");
}

#[test]
fn a_diverging_learning_rate_stops_with_a_hint() {
    let dir = trained();
    let stderr = fails(
        dir.path(),
        &["run", "--random-base", "--lr", "1e15", "--batch-size", "16", "--out", "nan"],
    );
    assert!(stderr.contains("the loss became"), "{stderr}");
    assert!(stderr.contains("hint: lower the learning rate"), "{stderr}");
}
