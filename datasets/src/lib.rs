//! Dataset readers for the standard on-disk formats and federated partitioners.
//! No Burn dependency: images come out as bytes, labels as `u16`.

pub mod cifar;
mod cifar_kind;
pub mod cifar_python;
pub mod cinic;
mod dataset;
mod error;
pub mod idx;
mod load;
pub mod mutation;
pub mod partition;

pub use dataset::{Dataset, ImageSet};
pub use error::DataError;
pub use load::{candidates, load, shipped_subset_dir, DatasetKind, DEBIAN_FASHION_MNIST};
