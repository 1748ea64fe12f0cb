//! Reading only the expected members out of archives (tar, zip) and gzip streams.
//!
//! Nothing here writes a file under a name taken from an archive: callers ask for members by
//! their exact, known paths, so a member called `../../etc/passwd`, a link or a device can
//! never be selected.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, bail};
use flate2::read::MultiGzDecoder;

/// The two magic bytes that open every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decompresses `bytes` when they are a gzip stream (recognised by its magic bytes, not by a
/// file name); returns them unchanged otherwise. A truncated or corrupt stream is an error.
pub fn gunzip_if_compressed(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .context("the gzip stream is truncated or corrupt")?;
    Ok(out)
}

/// Reads the regular-file members of a tar stream whose paths are exactly `prefix + name` for
/// one of `names` (a leading `./` in the archive is ignored). Members with an unsafe path (see
/// [`check_relative_member`]) are never selected. Returns the found ones by name.
pub fn tar_members(
    reader: impl Read,
    prefix: &str,
    names: &[&str],
) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut archive = tar::Archive::new(reader);
    let mut found = HashMap::new();
    for entry in archive.entries().context("reading the tar archive")? {
        let mut entry = entry.context("reading a tar entry")?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw_path = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw_path);
        let path = path.strip_prefix("./").unwrap_or(&path);
        if check_relative_member(path).is_err() {
            continue;
        }
        let Some(name) = path.strip_prefix(prefix).filter(|name| names.contains(name)) else {
            continue;
        };
        let name = name.to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {prefix}{name} from the tar archive"))?;
        found.insert(name, bytes);
    }
    Ok(found)
}

/// Checks that a member path from an archive is a plain relative path (no `..`, no root, no
/// backslashes) before it is joined onto a destination folder.
pub fn check_relative_member(path: &str) -> anyhow::Result<()> {
    let unsafe_component =
        path.split('/').any(|part| part == ".." || part.contains('\\') || part.contains(':'));
    if path.starts_with('/') || unsafe_component {
        bail!("refusing archive member with an unsafe path: {path:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
