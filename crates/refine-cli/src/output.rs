//! Files in the output folder: atomic JSON writes and the per-epoch metrics log.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use trainer::EpochMetrics;

/// Creates `dir` and checks that a file can be written in it.
pub fn prepare_out(dir: &Path) -> anyhow::Result<()> {
    let hint = || {
        format!("cannot write to the output folder {}\nhint: choose another --out", dir.display())
    };
    fs::create_dir_all(dir).with_context(hint)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    File::create(&probe).with_context(hint)?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// Writes `bytes` to `path` via a temporary file and a rename: never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes a JSON document (pretty, with a final newline) atomically.
pub fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// `metrics.jsonl`: one line per finished epoch (`{"phase": ..., "epoch": ..., ...}`), each
/// flushed as it is written, so a killed run keeps every finished epoch.
pub struct MetricsLog {
    path: PathBuf,
    lines: Vec<Value>,
}

impl MetricsLog {
    /// Starts a new, empty log at `path`.
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        let log = MetricsLog { path, lines: Vec::new() };
        log.rewrite()?;
        Ok(log)
    }

    fn line(phase: &str, metrics: &EpochMetrics) -> Value {
        let mut value = json!({ "phase": phase });
        if let (Some(map), Ok(Value::Object(fields))) =
            (value.as_object_mut(), serde_json::to_value(metrics))
        {
            map.extend(fields);
        }
        value
    }

    /// Appends one epoch and flushes it to disk.
    pub fn append(&mut self, phase: &str, metrics: &EpochMetrics) -> anyhow::Result<()> {
        let line = Self::line(phase, metrics);
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "{line}")
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.lines.push(line);
        Ok(())
    }

    /// Records epochs restored from a saved state (replacing any lines of that phase).
    pub fn restore(&mut self, phase: &str, epochs: &[EpochMetrics]) -> anyhow::Result<()> {
        self.lines.retain(|line| line["phase"] != phase);
        self.lines.extend(epochs.iter().map(|metrics| Self::line(phase, metrics)));
        self.rewrite()
    }

    fn rewrite(&self) -> anyhow::Result<()> {
        let text: String = self.lines.iter().map(|line| format!("{line}\n")).collect();
        write_atomic(&self.path, text.as_bytes())
    }
}
