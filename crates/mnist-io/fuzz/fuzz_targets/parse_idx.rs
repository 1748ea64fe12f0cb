//! Feeds arbitrary bytes (raw or gzip) to the IDX parsers: they must return `Ok` or `Err`,
//! never panic, and never allocate more than a small multiple of the input (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb` catch that).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz-input");
    if let Ok(images) = mnist_io::Images::parse(data, origin) {
        // A parsed file must re-encode to exactly the bytes it came from (for raw input).
        if !data.starts_with(&[0x1f, 0x8b]) {
            assert_eq!(images.to_idx_bytes().ok().as_deref(), Some(data));
        }
    }
    if let Ok(labels) = mnist_io::parse_labels(data, origin) {
        if !data.starts_with(&[0x1f, 0x8b]) {
            assert_eq!(mnist_io::labels_to_idx_bytes(&labels).ok().as_deref(), Some(data));
        }
    }
});
