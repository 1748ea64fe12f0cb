use std::io::Write;

use super::*;

/// Writes a zip with the given (name, bytes) members.
fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
    for (name, bytes) in members {
        zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// A cache holding three small stand-in wheels with the members a CPU libtorch needs.
fn fake_wheel_cache(dir: &Path, extra_torch_member: Option<&str>) {
    fs::create_dir_all(dir).unwrap();
    let mut torch: Vec<(String, &[u8])> =
        CORE_LIBS.iter().map(|lib| (format!("torch/lib/{lib}"), &b"elf"[..])).collect();
    torch.push(("torch/lib/libtorch_cuda.so".into(), b"big"));
    torch.push(("torch/include/torch/torch.h".into(), b"#pragma once"));
    torch.push(("torch/share/cmake/Torch/TorchConfig.cmake".into(), b"# cmake"));
    if let Some(member) = extra_torch_member {
        torch.push((member.into(), b"evil"));
    }
    let torch: Vec<(&str, &[u8])> = torch.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    write_zip(&dir.join("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"), &torch);
    write_zip(
        &dir.join("nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.whl"),
        &[("nvidia/cu13/lib/libcudart.so.13", b"rt"), ("nvidia/cu13/lib/libcudart_static.a", b"")],
    );
    write_zip(
        &dir.join("nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl"),
        &[("nvidia/cu13/lib/libcupti.so.13", b"cupti")],
    );
}

#[test]
fn provisions_only_the_cpu_subset_and_marks_it_complete() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    fake_wheel_cache(&cache, None);
    provision_cpu(root.path(), &cache).unwrap();
    let libtorch = root.path().join(LIBTORCH_DIR);
    assert!(is_complete(&libtorch));
    for lib in CORE_LIBS.iter().chain(&["libcudart.so.13", "libcupti.so.13", "libgomp.so"]) {
        assert!(libtorch.join("lib").join(lib).exists(), "missing {lib}");
    }
    assert!(!libtorch.join("lib/libtorch_cuda.so").exists(), "CUDA library was extracted");
    assert!(!libtorch.join("lib/libcudart_static.a").exists());
    assert!(libtorch.join("include/torch/torch.h").is_file());
    assert!(libtorch.join("share/cmake/Torch/TorchConfig.cmake").is_file());
    assert_eq!(fs::read_to_string(libtorch.join("build-version")).unwrap(), "2.13.0+cpu\n");
    check_libtorch(&libtorch).unwrap();
}

#[test]
fn an_interrupted_extraction_is_removed_and_redone() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    fake_wheel_cache(&cache, None);
    // What a run killed mid-extraction leaves: a partial folder without build-version.
    let leftover = root.path().join(format!("{PARTIAL_PREFIX}4242"));
    fs::create_dir_all(leftover.join("lib")).unwrap();
    fs::write(leftover.join("lib/libtorch_cpu.so"), b"half").unwrap();
    assert!(!is_complete(&root.path().join(LIBTORCH_DIR)));

    provision_cpu(root.path(), &cache).unwrap();
    assert!(!leftover.exists(), "the leftover partial folder was kept");
    assert!(is_complete(&root.path().join(LIBTORCH_DIR)));
}

#[test]
fn a_wheel_member_escaping_the_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    fake_wheel_cache(&cache, Some("torch/include/../../../escaped.h"));
    let error = provision_cpu(root.path(), &cache).unwrap_err();
    assert!(format!("{error:#}").contains("unsafe path"), "{error:#}");
    assert!(!root.path().join("escaped.h").exists());
    assert!(!root.path().join(LIBTORCH_DIR).exists());
}

#[test]
fn a_wrong_version_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("lib")).unwrap();
    fs::create_dir_all(dir.path().join("include")).unwrap();
    fs::write(dir.path().join("lib/libtorch_cpu.so"), b"").unwrap();
    fs::write(dir.path().join("build-version"), "2.5.1+cpu\n").unwrap();
    let message = format!("{:#}", check_libtorch(dir.path()).unwrap_err());
    assert!(message.contains("2.5.1+cpu") && message.contains("2.13.0"), "{message}");
}

#[test]
fn a_folder_without_the_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let message = format!("{:#}", check_libtorch(dir.path()).unwrap_err());
    assert!(message.contains("lib/libtorch_cpu.so"), "{message}");
}
