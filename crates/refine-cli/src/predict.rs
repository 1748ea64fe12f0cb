//! `predict` and `inspect`: using and looking into checkpoints.

use std::path::Path;

use anyhow::{Context, bail};
use image::imageops::FilterType;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::args::{InspectArgs, PredictArgs};
use crate::commands::setup;

/// MNIST's image side.
const SIDE: u32 = 28;

/// Images from one input file as `(label for the output, 28x28 pixels)`.
fn read_images(path: &Path, invert: bool) -> anyhow::Result<Vec<(Option<usize>, Vec<u8>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // IDX files start with two zero bytes (or gzip's magic); PNG and JPEG never do.
    let idx_like = bytes.starts_with(&[0, 0]) || bytes.starts_with(&[0x1f, 0x8b]);
    if idx_like {
        let images = mnist_io::Images::parse(&bytes, path)?;
        if images.rows() != SIDE as usize || images.cols() != SIDE as usize {
            bail!(
                "{}: IDX images are {}x{}, the model needs 28x28",
                path.display(),
                images.rows(),
                images.cols()
            );
        }
        return Ok((0..images.count())
            .map(|i| (Some(i), images.get(i).unwrap_or_default().to_vec()))
            .collect());
    }
    let decoded = image::load_from_memory(&bytes)
        .with_context(|| format!("{}: not an IDX, PNG or JPEG image", path.display()))?
        .into_luma8();
    let resized = if decoded.dimensions() == (SIDE, SIDE) {
        decoded
    } else {
        image::imageops::resize(&decoded, SIDE, SIDE, FilterType::Triangle)
    };
    let mut pixels = resized.into_raw();
    if invert {
        pixels.iter_mut().for_each(|pixel| *pixel = 255 - *pixel);
    }
    Ok(vec![(None, pixels)])
}

/// `predict`: one JSON line per image.
pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let device = setup(&args.common)?;
    let (base_store, base) = trainer::load_base(&args.base, device)
        .with_context(|| format!("loading the base {}", args.base.display()))?;
    let fingerprint = trainer::store_fingerprint(&base_store);
    let (_, head, _) = trainer::load_head(&args.head, device, &fingerprint, args.allow_other_base)
        .with_context(|| format!("loading the head {}", args.head.display()))?;
    for file in &args.files {
        let images = read_images(file, args.invert)?;
        let pixels: Vec<u8> =
            images.iter().flat_map(|(_, pixels)| pixels.iter().copied()).collect();
        let batch = Tensor::from_slice(&pixels)
            .to_kind(Kind::Float)
            .divide_scalar(255.0)
            .reshape([images.len() as i64, 1, SIDE as i64, SIDE as i64])
            .to_device(device);
        let probabilities = trainer::predict(&base, &head, &batch).to_device(Device::Cpu);
        for (row, (index, _)) in images.iter().enumerate() {
            let probs = Vec::<f32>::try_from(probabilities.get(row as i64))?;
            let class = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(class, _)| class);
            let mut line = json!({ "file": file, "class": class, "probabilities": probs });
            if let Some(index) = index {
                line["index"] = json!(index);
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// `inspect`: a checkpoint's tensors and bindings.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let checkpoint = trainer::load_checkpoint(&args.file, Device::Cpu)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tensors: Vec<serde_json::Value> = checkpoint
        .tensors
        .iter()
        .map(|(name, tensor)| {
            json!({
                "name": name,
                "shape": tensor.size(),
                "dtype": format!("{:?}", tensor.kind()),
                "fingerprint": trainer::tensor_hex(name, tensor),
            })
        })
        .collect();
    let fingerprint =
        trainer::Fingerprints::of(checkpoint.tensors.iter().map(|(n, t)| (n.as_str(), t))).combined;
    let mut document = json!({
        "file": args.file,
        "kind": checkpoint.meta("refine.kind").unwrap_or("unknown"),
        "fingerprint": fingerprint,
        "metadata": checkpoint.metadata,
        "tensors": tensors,
    });
    if args.show_weights {
        let slices: serde_json::Map<String, serde_json::Value> =
            ["representation.weight", "final.weight"]
                .iter()
                .filter_map(|name| {
                    let tensor = checkpoint.tensor(name)?;
                    let slice = tensor.narrow(0, 0, tensor.size()[0].min(5)).narrow(
                        1,
                        0,
                        tensor.size()[1].min(5),
                    );
                    Some((name.to_string(), json!(Vec::<Vec<f32>>::try_from(slice).ok()?)))
                })
                .collect();
        document["weights_5x5"] = json!(slices);
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        crate::summary::print_inspect(&document);
    }
    Ok(())
}
