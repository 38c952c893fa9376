//! CIFAR-10 and CIFAR-100, python version (the files torchvision downloads):
//! `cifar-10-batches-py/{data_batch_1..5,test_batch}` and `cifar-100-python/{train,test}`,
//! each a pickled dict (protocol 2, written by Python 2's cPickle, so its keys are byte
//! strings) with `data`, a numpy uint8 array `[N, 3072]` (1024 R, 1024 G, 1024 B per image,
//! each 32×32 row-major: the binary version's pixel order), and `labels` (CIFAR-10) or
//! `fine_labels` (CIFAR-100, whose fine labels we use), lists of N ints.
//!
//! The pickle is read by `serde-pickle`, which keeps a numpy array as the state tuple
//! `(1, shape, dtype state, is_fortran, raw bytes)` numpy's `__reduce__` gives it.

use std::path::Path;

use serde_pickle::{DeOptions, HashableValue, Value};

use crate::cifar_kind::CifarKind;
use crate::dataset::ImageSet;
use crate::error::DataError;

const PIXELS: usize = 3 * 32 * 32;

/// Parse one python-version CIFAR file and append its images to `out`.
pub fn read_cifar_pickle_file(path: &Path, kind: CifarKind, out: &mut ImageSet) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_cifar_pickle(path, &bytes, kind, out)
}

/// [`read_cifar_pickle_file`] on the file's bytes (`path` names it in errors).
pub fn parse_cifar_pickle(path: &Path, bytes: &[u8], kind: CifarKind, out: &mut ImageSet) -> Result<(), DataError> {
    let bad = |problem: String| DataError::malformed(path, problem);
    // Not `decode_strings`: the pixels are a Python 2 byte string, not text.
    let value = serde_pickle::value_from_slice(bytes, DeOptions::new()).map_err(|e| bad(format!("not a readable pickle ({e}); truncated or not a CIFAR python batch?")))?;
    let Value::Dict(dict) = value else {
        return Err(bad("the pickle holds no dict; not a CIFAR python batch".into()));
    };
    let get = |key: &str| dict.get(&HashableValue::Bytes(key.as_bytes().to_vec())).or_else(|| dict.get(&HashableValue::String(key.to_string())));
    let label_key = kind.pickle_label_key();
    let data = get("data").ok_or_else(|| bad("no `data` entry".into()))?;
    let labels = get(label_key).ok_or_else(|| bad(format!("no `{label_key}` entry (is this a {kind:?} file?)")))?;
    let pixels = array_bytes(data).map_err(|p| bad(format!("`data`: {p}")))?;
    let Value::List(labels) = labels else {
        return Err(bad(format!("`{label_key}` is not a list")));
    };
    let n = pixels.len() / PIXELS;
    if labels.len() != n {
        return Err(bad(format!("`data` holds {n} images but `{label_key}` {} labels", labels.len())));
    }
    let start = out.labels.len();
    for (i, label) in labels.iter().enumerate() {
        let label = match label {
            Value::I64(l) if (0..kind.num_classes() as i64).contains(l) => *l as u16,
            other => {
                out.labels.truncate(start);
                return Err(bad(format!("`{label_key}`[{i}] = {other:?} is not a label in 0..{}", kind.num_classes())));
            }
        };
        out.labels.push(label);
    }
    out.pixels.extend_from_slice(pixels);
    Ok(())
}

/// The pixel bytes of a pickled numpy uint8 array of shape `[N, 3072]`, C order.
fn array_bytes(value: &Value) -> Result<&[u8], String> {
    let Value::Tuple(state) = value else {
        return Err("not a numpy array".into());
    };
    let [_, Value::Tuple(shape), _, Value::Bool(fortran), Value::Bytes(raw)] = state.as_slice() else {
        return Err("not a numpy array's state (version, shape, dtype, order, bytes)".into());
    };
    let dims: Vec<i64> = shape.iter().map(|d| if let Value::I64(d) = d { *d } else { -1 }).collect();
    let [n, width] = dims.as_slice() else {
        return Err(format!("shape {dims:?} is not [N, {PIXELS}]"));
    };
    if *width != PIXELS as i64 || *n < 0 {
        return Err(format!("shape {dims:?} is not [N, {PIXELS}]"));
    }
    if *fortran {
        return Err("a Fortran-order array (CIFAR's is C order)".into());
    }
    // One byte per element: an array of any wider dtype holds more bytes than this.
    if raw.len() != *n as usize * PIXELS {
        return Err(format!("{} bytes for shape {dims:?}: not uint8 ({} expected)", raw.len(), *n as usize * PIXELS));
    }
    Ok(raw)
}
