//! IDX files (LeCun's MNIST format; also EMNIST and Fashion-MNIST), raw or gzipped.
//!
//! Layout: magic `00 00 <type> <ndims>`, `ndims` big-endian u32 sizes, then the data.
//! We read type `0x08` (unsigned byte): images `[n, rows, cols]`, labels `[n]`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::ImageSet;
use crate::error::DataError;

/// Read a whole file, un-gzipping when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_maybe_gz(path, raw)
}

/// Un-gzip `raw` when it starts with the gzip magic (`path` names it in errors). The stream
/// is read no further than one byte past what its IDX header claims, so a small file that
/// inflates without end (a "gzip bomb") cannot exhaust memory; a claim larger than the data
/// allocates only as data actually arrives.
pub fn decode_maybe_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let corrupt = |e: std::io::Error| DataError::malformed(path, format!("corrupt gzip stream: {e}"));
    let mut decoder = flate2::read::GzDecoder::new(&raw[..]);
    let mut out = Vec::new();
    (&mut decoder).take(4).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() < 4 {
        return Ok(out); // parse_idx reports the truncated header
    }
    let ndims = out[3] as u64;
    (&mut decoder).take(4 * ndims).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() < 4 + 4 * ndims as usize {
        return Ok(out);
    }
    let claim = (0..ndims as usize)
        .map(|i| u32::from_be_bytes(out[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as u64)
        .try_fold(1u64, |acc, d| acc.checked_mul(d))
        .unwrap_or(u64::MAX - 1);
    (&mut decoder).take(claim.saturating_add(1)).read_to_end(&mut out).map_err(corrupt)?;
    Ok(out)
}

/// Parse an IDX byte buffer of unsigned bytes; returns its dimensions and data.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::malformed(path, format!("truncated IDX header: {} bytes", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::malformed(path, "not an IDX file (magic must start with 00 00)"));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::malformed(path, format!("IDX element type 0x{:02x} is not unsigned byte (0x08)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::malformed(path, format!("truncated IDX header: {ndims} dimensions need {header} bytes, file has {}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data = &bytes[header..];
    match expected {
        Some(n) if n == data.len() => Ok((dims, data.to_vec())),
        Some(n) if n > data.len() => Err(DataError::malformed(
            path,
            format!("truncated: dimensions {dims:?} need {n} data bytes, file has {}", data.len()),
        )),
        Some(n) => Err(DataError::malformed(path, format!("{} trailing bytes after the {n} the dimensions {dims:?} describe", data.len() - n))),
        None => Err(DataError::malformed(path, format!("dimensions {dims:?} overflow"))),
    }
}

/// Read an image file and its label file into an [`ImageSet`] (1 channel).
/// `transpose` flips rows and columns (EMNIST stores images transposed).
pub fn read_idx_pair(images: &Path, labels: &Path, num_classes: usize, label_offset: u16, transpose: bool) -> Result<ImageSet, DataError> {
    let image_bytes = read_maybe_gz(images)?;
    let label_bytes = read_maybe_gz(labels)?;
    parse_idx_pair(images, &image_bytes, labels, &label_bytes, num_classes, label_offset, transpose)
}

/// [`read_idx_pair`] on the (un-gzipped) bytes of both files; the paths name them in errors.
pub fn parse_idx_pair(
    images: &Path,
    image_bytes: &[u8],
    labels: &Path,
    label_bytes: &[u8],
    num_classes: usize,
    label_offset: u16,
    transpose: bool,
) -> Result<ImageSet, DataError> {
    let (idims, mut pixels) = parse_idx(images, image_bytes)?;
    if idims.len() != 3 {
        return Err(DataError::malformed(images, format!("expected 3 dimensions [n, rows, cols] for images, found {idims:?}")));
    }
    if idims.contains(&0) {
        return Err(DataError::malformed(images, format!("dimensions {idims:?}: every dimension must be at least 1")));
    }
    let (ldims, raw_labels) = parse_idx(labels, label_bytes)?;
    if ldims.len() != 1 {
        return Err(DataError::malformed(labels, format!("expected 1 dimension [n] for labels, found {ldims:?}")));
    }
    if idims[0] != ldims[0] {
        return Err(DataError::CountMismatch {
            images: PathBuf::from(images),
            n_images: idims[0],
            labels: PathBuf::from(labels),
            n_labels: ldims[0],
        });
    }
    let labels_out = raw_labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let v = (l as u16).checked_sub(label_offset).filter(|&v| (v as usize) < num_classes);
            v.ok_or_else(|| DataError::malformed(labels, format!("label {l} at index {i} is outside 0..{num_classes} (after offset {label_offset})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (rows, cols) = (idims[1], idims[2]);
    if transpose {
        for img in pixels.chunks_exact_mut(rows * cols) {
            let copy = img.to_vec();
            for r in 0..rows {
                for c in 0..cols {
                    img[c * rows + r] = copy[r * cols + c];
                }
            }
        }
    }
    let shape = if transpose { [1, cols, rows] } else { [1, rows, cols] };
    Ok(ImageSet { shape, pixels, labels: labels_out })
}

/// Write an IDX file of unsigned bytes (used by tests and by the subset tool).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> std::io::Result<()> {
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes)?;
        bytes = enc.finish()?;
    }
    std::fs::write(path, bytes)
}
