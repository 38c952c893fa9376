//! CINIC-10 (Darlow et al. 2018), as distributed: `train/`, `valid/`, `test/`, each with one
//! folder per class (`airplane … truck`) of 32×32 PNG images. Grayscale PNGs (a few of the
//! ImageNet-derived images) are replicated to three channels.

use std::path::Path;

use crate::dataset::ImageSet;
use crate::error::DataError;

pub const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Decode one PNG into 3×32×32 CHW bytes.
pub fn decode_png(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_png_bytes(path, &bytes)
}

/// [`decode_png`] on the file's bytes (`path` names it in errors). The header's size is
/// checked before any pixel buffer is allocated.
pub fn decode_png_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| DataError::malformed(path, format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width, reader.info().height);
    if (w, h) != (32, 32) {
        return Err(DataError::malformed(path, format!("image is {w}×{h}, CINIC-10 images are 32×32")));
    }
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| DataError::malformed(path, format!("corrupt PNG data: {e}")))?;
    if (info.width, info.height) != (32, 32) {
        return Err(DataError::malformed(path, format!("image is {}×{}, CINIC-10 images are 32×32", info.width, info.height)));
    }
    let channels = info.color_type.samples();
    let hw = 32 * 32;
    let mut chw = vec![0u8; 3 * hw];
    for p in 0..hw {
        let px = &buf[p * channels..(p + 1) * channels];
        for c in 0..3 {
            // Gray (+alpha) → replicate; RGB(A) → take R, G, B.
            chw[c * hw + p] = if channels < 3 { px[0] } else { px[c] };
        }
    }
    Ok(chw)
}

/// Read one split folder (`train`, `valid` or `test`).
pub fn read_cinic_split(dir: &Path) -> Result<ImageSet, DataError> {
    let mut set = ImageSet { shape: [3, 32, 32], pixels: Vec::new(), labels: Vec::new() };
    for (label, class) in CLASSES.iter().enumerate() {
        let class_dir = dir.join(class);
        let mut files: Vec<_> = std::fs::read_dir(&class_dir)
            .map_err(|e| DataError::io(&class_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
            .collect();
        // Directory order differs between filesystems; sort so runs are reproducible.
        files.sort();
        if files.is_empty() {
            return Err(DataError::malformed(&class_dir, "class folder holds no .png images"));
        }
        for f in files {
            set.pixels.extend(decode_png(&f)?);
            set.labels.push(label as u16);
        }
    }
    Ok(set)
}
