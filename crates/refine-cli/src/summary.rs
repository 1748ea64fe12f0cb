//! Short human summaries on stdout (the JSON report has everything).

use serde_json::Value;
use trainer::FreezePlan;

fn percent(value: &Value) -> String {
    value.as_f64().map_or_else(|| "-".to_owned(), |v| format!("{:.2}%", v * 100.0))
}

fn short(fingerprint: &Value) -> String {
    fingerprint.as_str().map_or_else(String::new, |f| f.chars().take(16).collect())
}

fn print_epochs(epochs: &Value) {
    println!(
        "  {:>5}  {:>10}  {:>9}  {:>9}  {:>8}",
        "epoch", "train_loss", "train_acc", "test_acc", "seconds"
    );
    for epoch in epochs.as_array().into_iter().flatten() {
        println!(
            "  {:>5}  {:>10.4}  {:>9}  {:>9}  {:>8.2}",
            epoch["epoch"].as_u64().unwrap_or(0),
            epoch["train_loss"].as_f64().unwrap_or(f64::NAN),
            percent(&epoch["train_accuracy"]),
            percent(&epoch["test_accuracy"]),
            epoch["seconds"].as_f64().unwrap_or(0.0)
        );
    }
}

/// The summary of `run` and `refine`.
pub fn print_run(report: &Value) {
    let dataset = &report["dataset"];
    println!(
        "dataset         {} ({} train / {} test)",
        dataset["name"].as_str().unwrap_or("?"),
        dataset["train_examples"],
        dataset["test_examples"]
    );
    let base = &report["base"];
    let base_line = match base["source"].as_str() {
        Some("pretrained") => {
            format!("pretrained here, test accuracy {}", percent(&base["pretrain_test_accuracy"]))
        }
        Some("reused") => "reused from an earlier run with the same settings".to_owned(),
        Some("random") => "random, untrained (the seed's scenario)".to_owned(),
        _ => format!("loaded from {}", base["path"].as_str().unwrap_or("?")),
    };
    println!("base            {base_line}");
    println!(
        "frozen          {} tensors, {} parameters",
        report["frozen_tensors"], report["frozen_parameters"]
    );
    println!(
        "trained         {} tensors, {} parameters ({})",
        report["trained_tensors"],
        report["trained_parameters"],
        report["train_from"]
            .as_str()
            .map_or("head only".to_owned(), |layer| format!("head + base from {layer}"))
    );
    print_epochs(&report["epochs"]);
    println!("test accuracy   {}", percent(&report["test_accuracy"]));
    let unchanged = report["base_unchanged"].as_bool() == Some(true);
    println!(
        "base unchanged  {} (fingerprint {} before, {} after)",
        if unchanged { "yes" } else { "NO" },
        short(&report["base_fingerprint_before"]),
        short(&report["base_fingerprint_after"])
    );
    println!(
        "head changed    {}",
        if report["head_changed"].as_bool() == Some(true) { "yes" } else { "no" }
    );
    let t = &report["timings"];
    let seconds = |key: &str| t[key].as_f64().unwrap_or(0.0);
    println!(
        "time            load {:.2}s, pretrain {:.1}s, extract {:.2}s, refine {:.2}s, eval {:.2}s, total {:.1}s",
        seconds("load_s"),
        seconds("pretrain_s"),
        seconds("extract_s"),
        seconds("refine_s"),
        seconds("eval_s"),
        seconds("total_s")
    );
    if let Some(files) = report["files"].as_object() {
        let names: Vec<&str> = files.values().filter_map(Value::as_str).collect();
        println!("files           {}", names.join(", "));
    }
}

/// The summary of `pretrain`.
pub fn print_pretrain(report: &Value) {
    print_epochs(&report["epochs"]);
    println!("test accuracy   {}", percent(&report["test_accuracy"]));
    println!(
        "base            {} (fingerprint {})",
        report["files"]["base"].as_str().unwrap_or("?"),
        short(&report["base_fingerprint"])
    );
}

/// The summary of `eval`.
pub fn print_eval(report: &Value) {
    println!(
        "test accuracy   {} on {} examples (loss {:.4})",
        percent(&report["test_accuracy"]),
        report["test_examples"],
        report["test_loss"].as_f64().unwrap_or(f64::NAN)
    );
    let per_class: Vec<String> =
        report["per_class_accuracy"].as_array().into_iter().flatten().map(percent).collect();
    println!("per class       {}", per_class.join(" "));
    println!("confusion (rows: true class, columns: predicted)");
    for row in report["confusion_matrix"].as_array().into_iter().flatten() {
        let cells: Vec<String> =
            row.as_array().into_iter().flatten().map(|cell| format!("{cell:>5}")).collect();
        println!("  {}", cells.join(""));
    }
}

/// The freeze report of `--dry-run`.
pub fn print_freeze_plan(plan: &FreezePlan) {
    println!(
        "{:<28} {:<16} {:>9} {:<8} {:<9} {:>11}",
        "tensor", "shape", "elements", "role", "optimizer", "state bytes"
    );
    for tensor in &plan.tensors {
        println!(
            "{:<28} {:<16} {:>9} {:<8} {:<9} {:>11}",
            tensor.name,
            format!("{:?}", tensor.shape),
            tensor.numel,
            if tensor.trained { "trained" } else { "frozen" },
            if tensor.in_optimizer { "yes" } else { "no" },
            tensor.optimizer_state_bytes
        );
    }
    let (frozen, frozen_elements, trained, trained_elements) = plan.counts();
    println!(
        "frozen: {frozen} tensors ({frozen_elements} elements); trained: {trained} tensors ({trained_elements} elements)"
    );
}

/// The listing of `inspect`.
pub fn print_inspect(report: &Value) {
    println!("file         {}", report["file"].as_str().unwrap_or("?"));
    println!("kind         {}", report["kind"].as_str().unwrap_or("?"));
    println!("fingerprint  {}", report["fingerprint"].as_str().unwrap_or("?"));
    if let Some(bound) = report["metadata"]["base_fingerprint"].as_str() {
        println!("bound to     base {bound}");
    }
    for tensor in report["tensors"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:<18} {:<6} {}",
            tensor["name"].as_str().unwrap_or("?"),
            tensor["shape"].to_string(),
            tensor["dtype"].as_str().unwrap_or("?"),
            short(&tensor["fingerprint"])
        );
    }
    if let Some(slices) = report["weights_5x5"].as_object() {
        for (name, rows) in slices {
            println!("{name}[:5, :5]");
            for row in rows.as_array().into_iter().flatten() {
                let cells: Vec<String> = row
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| format!("{:>9.5}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect();
                println!("  {}", cells.join(" "));
            }
        }
    }
}
