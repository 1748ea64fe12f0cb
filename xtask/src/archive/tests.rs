use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

/// A tar archive with raw member names: the name bytes are written into the header directly,
/// so names the `tar` builder would reject (`../x`) can be made too.
fn tar_with(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in members {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, *data).expect("in-memory tar write");
    }
    builder.into_inner().expect("in-memory tar finish")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("in-memory gzip");
    encoder.finish().expect("in-memory gzip")
}

#[test]
fn takes_only_the_exact_expected_members() {
    let archive = tar_with(&[
        ("package/data/labels", tar::EntryType::Regular, b"good"),
        ("package/data/../../labels", tar::EntryType::Regular, b"evil"),
        ("package/data/other", tar::EntryType::Regular, b"other"),
    ]);
    let found = tar_members(archive.as_slice(), "package/data/", &["labels"]).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found["labels"], b"good");
}

#[test]
fn a_traversal_member_is_never_selected_even_when_alone() {
    let archive = tar_with(&[("package/data/../labels", tar::EntryType::Regular, b"evil")]);
    let found = tar_members(archive.as_slice(), "package/data/", &["labels", "../labels"]).unwrap();
    assert!(found.is_empty(), "selected {:?}", found.keys().collect::<Vec<_>>());
}

#[test]
fn links_are_skipped() {
    let archive = tar_with(&[("./data/labels", tar::EntryType::Symlink, b"")]);
    let found = tar_members(archive.as_slice(), "data/", &["labels"]).unwrap();
    assert!(found.is_empty());
}

#[test]
fn a_leading_dot_slash_is_ignored() {
    let archive = tar_with(&[("./usr/share/x.gz", tar::EntryType::Regular, b"x")]);
    let found = tar_members(archive.as_slice(), "usr/share/", &["x.gz"]).unwrap();
    assert_eq!(found["x.gz"], b"x");
}

#[test]
fn gzip_is_detected_by_magic_and_decompressed() {
    let raw = b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x03".to_vec();
    assert_eq!(gunzip_if_compressed(gzip(&raw)).unwrap(), raw);
    assert_eq!(gunzip_if_compressed(raw.clone()).unwrap(), raw);
}

#[test]
fn a_truncated_gzip_is_an_error() {
    let compressed = gzip(&vec![7u8; 10_000]);
    let truncated = compressed[..compressed.len() / 2].to_vec();
    let error = gunzip_if_compressed(truncated).unwrap_err();
    assert!(error.to_string().contains("truncated or corrupt"), "{error:#}");
}

#[test]
fn unsafe_member_paths_are_refused() {
    for path in ["../x", "a/../../x", "/etc/passwd", "a\\..\\x", "C:x"] {
        assert!(check_relative_member(path).is_err(), "{path} was accepted");
    }
    check_relative_member("torch/include/ATen/ATen.h").unwrap();
}
