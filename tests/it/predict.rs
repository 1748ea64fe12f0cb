//! `predict` on a PNG drawn from a dataset image gives the class `eval`'s model gives that image
//! as IDX, and `inspect` shows the head's binding.

use refine_tests::{run_cli, synthetic, write_dataset};

use crate::json_stdout;

#[test]
fn predict_on_a_drawn_png_matches_the_idx_image() {
    let dir = tempfile::tempdir().unwrap();
    let test = synthetic(100, 21);
    write_dataset(&dir.path().join("data/mnist"), &synthetic(600, 20), &test);
    let trained = run_cli(dir.path(), &["run", "--pretrain-epochs", "1", "--epochs", "2", "-q"]);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));

    let one = test.take(1);
    one.images().write(&dir.path().join("one-idx3")).unwrap();
    let pixels = one.images().get(0).unwrap().to_vec();
    image::GrayImage::from_raw(28, 28, pixels).unwrap().save(dir.path().join("digit.png")).unwrap();
    // The same digit drawn at 56x56: resized to 28x28 on the way in.
    let big = image::imageops::resize(
        &image::open(dir.path().join("digit.png")).unwrap().into_luma8(),
        56,
        56,
        image::imageops::FilterType::Nearest,
    );
    big.save(dir.path().join("big.png")).unwrap();

    let model = ["--base", "runs/mnist/base.safetensors", "--head", "runs/mnist/head.safetensors"];
    let output = run_cli(
        dir.path(),
        &[&["predict"][..], &model, &["one-idx3", "digit.png", "big.png"]].concat(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["class"], one.labels()[0]);
    assert_eq!(lines[1]["class"], lines[0]["class"]);
    assert_eq!(
        lines[1]["probabilities"], lines[0]["probabilities"],
        "PNG and IDX pixels are the same"
    );
    assert_eq!(lines[2]["class"], lines[0]["class"]);
    let total: f64 =
        lines[0]["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4);

    let inspect = run_cli(
        dir.path(),
        &["inspect", "runs/mnist/head.safetensors", "--show-weights", "--json"],
    );
    assert!(inspect.status.success());
    let head = json_stdout(&inspect);
    let base =
        json_stdout(&run_cli(dir.path(), &["inspect", "runs/mnist/base.safetensors", "--json"]));
    assert_eq!(head["kind"], "head");
    assert_eq!(head["metadata"]["base_fingerprint"], base["fingerprint"]);
    assert_eq!(head["weights_5x5"]["final.weight"].as_array().unwrap().len(), 5);
}
