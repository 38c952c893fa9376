//! CIFAR-10 and CIFAR-100 binary versions (Krizhevsky 2009), as distributed:
//! `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`: records of 1 label byte + 3072
//! pixel bytes (1024 R, 1024 G, 1024 B, each 32×32 row-major);
//! `cifar-100-binary/{train,test}.bin`: records of coarse label, fine label, 3072 pixels.
//! We use CIFAR-100's fine labels (100 classes). The python version torchvision downloads is
//! read by `cifar_python.rs`.

use std::path::Path;

pub use crate::cifar_kind::CifarKind;
use crate::cifar_python::read_cifar_pickle_file;
use crate::dataset::ImageSet;
use crate::error::DataError;

const PIXELS: usize = 3 * 32 * 32;

/// Parse one CIFAR binary file and append its records to `out`.
pub fn read_cifar_file(path: &Path, kind: CifarKind, out: &mut ImageSet) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_cifar(path, &bytes, kind, out)
}

/// [`read_cifar_file`] on the file's bytes (`path` names it in errors).
pub fn parse_cifar(path: &Path, bytes: &[u8], kind: CifarKind, out: &mut ImageSet) -> Result<(), DataError> {
    let record = kind.label_bytes() + PIXELS;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::malformed(
            path,
            format!("{} bytes is not a whole number of {record}-byte {:?} records (truncated or wrong file?)", bytes.len(), kind),
        ));
    }
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[kind.label_bytes() - 1] as usize;
        if label >= kind.num_classes() {
            return Err(DataError::malformed(path, format!("record {i}: label {label} is outside 0..{}", kind.num_classes())));
        }
        out.labels.push(label as u16);
        out.pixels.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(())
}

/// Read the train and test splits from a distributed folder: the binary version
/// (`cifar-10-batches-bin`, `cifar-100-binary`) or, when `dir` holds no binary test file, the
/// python version (`cifar-10-batches-py`, `cifar-100-python`).
pub fn read_cifar(dir: &Path, kind: CifarKind) -> Result<(ImageSet, ImageSet), DataError> {
    let empty = || ImageSet { shape: [3, 32, 32], pixels: Vec::new(), labels: Vec::new() };
    let (mut train, mut test) = (empty(), empty());
    if !dir.join(kind.test_file()).is_file() && dir.join(kind.python_files().1).is_file() {
        let (train_files, test_file) = kind.python_files();
        for f in train_files {
            read_cifar_pickle_file(&dir.join(f), kind, &mut train)?;
        }
        read_cifar_pickle_file(&dir.join(test_file), kind, &mut test)?;
        return Ok((train, test));
    }
    for f in kind.train_files() {
        read_cifar_file(&dir.join(f), kind, &mut train)?;
    }
    read_cifar_file(&dir.join(kind.test_file()), kind, &mut test)?;
    Ok((train, test))
}
