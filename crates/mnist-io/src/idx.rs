//! The IDX file format: parsing (raw or gzip, detected by magic bytes) and writing.
//!
//! An IDX file is a big-endian magic number `0x0000TTDD` (`TT` the element type, `DD` the number
//! of dimensions), one big-endian `u32` per dimension, then the elements in row-major order. This
//! crate reads and writes unsigned-byte files (type `0x08`): images with 3 dimensions
//! (`count x rows x cols`) and labels with 1.
//!
//! Memory: a raw file's data is checked against the file length before anything is allocated,
//! so a lying header costs nothing. A gzip stream's data is read as it decompresses, never more
//! than the header declares plus one byte, so memory is bounded by the real decompressed size.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The IDX type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;
/// For gzip input, capacity reserved up front is at most this multiple of the compressed size;
/// beyond it the buffer grows only as real data arrives.
const GZIP_RESERVE_FACTOR: u64 = 8;

/// What a file is expected to hold.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Images,
    Labels,
}

impl Kind {
    fn dims(self) -> u8 {
        match self {
            Kind::Images => 3,
            Kind::Labels => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Images => "images",
            Kind::Labels => "labels",
        }
    }
}

/// A decoded unsigned-byte IDX array: its dimensions and its elements.
pub(crate) struct IdxArray {
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of `kind` from `path` (raw or gzip).
pub(crate) fn read_file(path: &Path, kind: Kind) -> Result<IdxArray> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        io::ErrorKind::IsADirectory => Error::IsDirectory { path: path.to_path_buf() },
        _ => Error::Io { path: path.to_path_buf(), source },
    };
    let mut file = File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if metadata.is_dir() {
        return Err(Error::IsDirectory { path: path.to_path_buf() });
    }
    decode(&mut file, Some(metadata.len()), path, kind)
}

/// Parses IDX bytes of `kind` (raw or gzip); `origin` names them in errors.
pub(crate) fn parse(bytes: &[u8], origin: &Path, kind: Kind) -> Result<IdxArray> {
    decode(&mut &bytes[..], Some(bytes.len() as u64), origin, kind)
}

/// Decodes one IDX stream of `input_len` bytes (raw or gzip).
fn decode(
    input: &mut dyn Read,
    input_len: Option<u64>,
    path: &Path,
    kind: Kind,
) -> Result<IdxArray> {
    let io_error = |source| Error::Io { path: path.to_path_buf(), source };
    let mut start = [0u8; 2];
    let got = read_up_to(input, &mut start).map_err(io_error)?;
    let mut chained = (&start[..got]).chain(input);
    if got == 2 && start == GZIP_MAGIC {
        let mut decoder = MultiGzDecoder::new(chained);
        let reserve_cap = input_len.map_or(0, |len| len.saturating_mul(GZIP_RESERVE_FACTOR));
        decode_stream(&mut decoder, None, reserve_cap, path, kind)
            .map_err(|error| gzip_error(error, path))
    } else {
        decode_stream(&mut chained, input_len, u64::MAX, path, kind)
    }
}

/// Maps I/O errors raised inside the gzip decoder to [`Error::Gzip`].
fn gzip_error(error: Error, path: &Path) -> Error {
    match error {
        Error::Io { source, .. } => Error::Gzip { path: path.to_path_buf(), source },
        other => other,
    }
}

/// Decodes a raw IDX stream. With `total_len` known, the data length is checked against it
/// before any allocation; otherwise at most `declared + 1` bytes are read.
fn decode_stream(
    input: &mut dyn Read,
    total_len: Option<u64>,
    reserve_cap: u64,
    path: &Path,
    kind: Kind,
) -> Result<IdxArray> {
    let io_error = |source| Error::Io { path: path.to_path_buf(), source };
    let mut magic = [0u8; 4];
    let got = read_up_to(input, &mut magic).map_err(io_error)?;
    if got < 4 {
        return Err(Error::TruncatedHeader { path: path.to_path_buf(), expected: 4, found: got });
    }
    if magic[0..2] != [0, 0] {
        return Err(Error::BadMagic { path: path.to_path_buf(), found: [magic[0], magic[1]] });
    }
    check_type(magic[2], path)?;
    let n_dims = magic[3];
    if n_dims != kind.dims() {
        return Err(Error::WrongDimensions {
            path: path.to_path_buf(),
            kind: kind.name(),
            expected: kind.dims(),
            found: n_dims,
        });
    }
    let header_len = 4 + 4 * usize::from(n_dims);
    let mut dim_bytes = vec![0u8; 4 * usize::from(n_dims)];
    let got = read_up_to(input, &mut dim_bytes).map_err(io_error)?;
    if got < dim_bytes.len() {
        return Err(Error::TruncatedHeader {
            path: path.to_path_buf(),
            expected: header_len,
            found: 4 + got,
        });
    }
    let dims: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|chunk| u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    // A product of at most three u32s fits in u128; anything past u64 can never match a file.
    let expected_u128: u128 = dims.iter().map(|&dim| u128::from(dim)).product();
    let expected = u64::try_from(expected_u128).unwrap_or(u64::MAX);
    let length_error = |found: u64| Error::DataLength {
        path: path.to_path_buf(),
        dims: dims.clone(),
        expected,
        found,
    };
    let data = match total_len {
        Some(total) => {
            let found = total.saturating_sub(header_len as u64);
            if found != expected {
                return Err(length_error(found));
            }
            let len = usize::try_from(expected).map_err(|_| length_error(found))?;
            let mut data = vec![0u8; len];
            input.read_exact(&mut data).map_err(io_error)?;
            data
        }
        None => {
            let reserve = usize::try_from(expected.min(reserve_cap)).unwrap_or(0);
            let mut data = Vec::with_capacity(reserve);
            input.take(expected.saturating_add(1)).read_to_end(&mut data).map_err(io_error)?;
            if data.len() as u64 != expected {
                return Err(length_error(data.len() as u64));
            }
            data
        }
    };
    Ok(IdxArray { dims, data })
}

/// Accepts only unsigned bytes, naming the IDX type of any other valid code.
fn check_type(code: u8, path: &Path) -> Result<()> {
    let name = match code {
        TYPE_U8 => return Ok(()),
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => return Err(Error::UnknownType { path: path.to_path_buf(), code }),
    };
    Err(Error::UnsupportedType { path: path.to_path_buf(), code, name })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Encodes an unsigned-byte IDX array with the given dimensions.
pub(crate) fn encode(dims: &[usize], data: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    // The number of dimensions is 1 or 3 here, always below 256.
    out.extend_from_slice(&[0, 0, TYPE_U8, dims.len() as u8]);
    for &dim in dims {
        let dim32 = u32::try_from(dim)
            .map_err(|_| Error::DimensionTooLarge { path: path.to_path_buf(), value: dim })?;
        out.extend_from_slice(&dim32.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_error = |source| Error::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_error)
}
