//! Finding and reading a dataset by name.
//!
//! Search order: an explicit `data_dir`, then well-known places (Debian's
//! `/usr/share/datasets/fashion-mnist/` for Fashion-MNIST; `./data/<name>` otherwise), then —
//! for Fashion-MNIST only — the compact real subset shipped in this crate's `data/` folder.

use std::path::{Path, PathBuf};

use crate::cifar::{read_cifar, CifarKind};
use crate::cinic::read_cinic_split;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::idx::read_idx_pair;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    FashionMnist,
    /// EMNIST "balanced" split (47 classes).
    Emnist,
    Cifar10,
    Cifar100,
    Cinic10,
}

impl DatasetKind {
    pub const ALL: [Self; 5] = [Self::FashionMnist, Self::Emnist, Self::Cifar10, Self::Cifar100, Self::Cinic10];

    pub fn name(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Emnist => "emnist",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::Cinic10 => "cinic10",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DataError> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| DataError::UnknownDataset(s.to_string()))
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::FashionMnist => "Fashion-MNIST, 1×28×28, 10 classes (IDX; Debian dataset-fashion-mnist or shipped subset)",
            Self::Emnist => "EMNIST balanced, 1×28×28, 47 classes (IDX: emnist-balanced-*-idx?-ubyte[.gz])",
            Self::Cifar10 => "CIFAR-10, 3×32×32, 10 classes (cifar-10-batches-bin/ or torchvision's cifar-10-batches-py/)",
            Self::Cifar100 => "CIFAR-100, 3×32×32, 100 fine classes (cifar-100-binary/ or torchvision's cifar-100-python/)",
            Self::Cinic10 => "CINIC-10, 3×32×32, 10 classes (train/ valid/ test/ PNG folders)",
        }
    }

    pub fn input_shape(self) -> [usize; 3] {
        match self {
            Self::FashionMnist | Self::Emnist => [1, 28, 28],
            _ => [3, 32, 32],
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Self::Emnist => 47,
            Self::Cifar100 => 100,
            _ => 10,
        }
    }
}

/// The subset of Fashion-MNIST shipped with the source (see `datasets/data/README.md`).
pub fn shipped_subset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("fashion-mnist-subset")
}

pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Candidate folders, in search order.
pub fn candidates(kind: DatasetKind, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = data_dir {
        out.push(d.to_path_buf());
        out.push(d.join(kind.name()));
    } else {
        if kind == DatasetKind::FashionMnist {
            out.push(PathBuf::from(DEBIAN_FASHION_MNIST));
        }
        out.push(Path::new("data").join(kind.name()));
        if kind == DatasetKind::FashionMnist {
            out.push(shipped_subset_dir());
        }
    }
    out
}

/// Find the first candidate folder that has the dataset's files, and read it.
pub fn load(kind: DatasetKind, data_dir: Option<&Path>) -> Result<Dataset, DataError> {
    let dirs = candidates(kind, data_dir);
    for dir in &dirs {
        if let Some(found) = probe(kind, dir) {
            return read(kind, &found);
        }
    }
    Err(DataError::NotFound {
        name: kind.name().into(),
        searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        hint: download_hint(kind).into(),
    })
}

fn download_hint(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::FashionMnist => "Install Debian's dataset-fashion-mnist or pass --data-dir with the four IDX files.",
        DatasetKind::Emnist => "Download EMNIST (gzip.zip from NIST), unpack the emnist-balanced-* IDX files, pass --data-dir.",
        DatasetKind::Cifar10 => "Download cifar-10-binary.tar.gz or cifar-10-python.tar.gz (torchvision's), unpack, pass --data-dir (the folder holding cifar-10-batches-bin/ or cifar-10-batches-py/).",
        DatasetKind::Cifar100 => "Download cifar-100-binary.tar.gz or cifar-100-python.tar.gz (torchvision's), unpack, pass --data-dir (the folder holding cifar-100-binary/ or cifar-100-python/).",
        DatasetKind::Cinic10 => "Download CINIC-10.tar.gz, unpack, pass --data-dir (the folder holding train/ valid/ test/).",
    }
}

/// IDX file names, tried raw and gzipped.
fn idx_names(kind: DatasetKind) -> [&'static str; 4] {
    match kind {
        DatasetKind::Emnist => [
            "emnist-balanced-train-images-idx3-ubyte",
            "emnist-balanced-train-labels-idx1-ubyte",
            "emnist-balanced-test-images-idx3-ubyte",
            "emnist-balanced-test-labels-idx1-ubyte",
        ],
        _ => ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}

/// The folder to read from if `dir` holds the dataset (possibly in its standard sub-folder).
fn probe(kind: DatasetKind, dir: &Path) -> Option<PathBuf> {
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Emnist => find_file(dir, idx_names(kind)[0]).map(|_| dir.to_path_buf()),
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let ck = if kind == DatasetKind::Cifar10 { CifarKind::Cifar10 } else { CifarKind::Cifar100 };
            [dir.join(ck.folder()), dir.join(ck.python_folder()), dir.to_path_buf()]
                .into_iter()
                .find(|d| d.join(ck.test_file()).is_file() || d.join(ck.python_files().1).is_file())
        }
        DatasetKind::Cinic10 => dir.join("test").is_dir().then(|| dir.to_path_buf()),
    }
}

fn read(kind: DatasetKind, dir: &Path) -> Result<Dataset, DataError> {
    let (train, test) = match kind {
        DatasetKind::FashionMnist | DatasetKind::Emnist => {
            let names = idx_names(kind);
            let file = |i: usize| find_file(dir, names[i]).unwrap_or_else(|| dir.join(format!("{}.gz", names[i])));
            let transpose = kind == DatasetKind::Emnist;
            let classes = kind.num_classes();
            (
                read_idx_pair(&file(0), &file(1), classes, 0, transpose)?,
                read_idx_pair(&file(2), &file(3), classes, 0, transpose)?,
            )
        }
        DatasetKind::Cifar10 => read_cifar(dir, CifarKind::Cifar10)?,
        DatasetKind::Cifar100 => read_cifar(dir, CifarKind::Cifar100)?,
        DatasetKind::Cinic10 => {
            // The FL training pool is CINIC's train split; valid/ is left for tuning.
            (read_cinic_split(&dir.join("train"))?, read_cinic_split(&dir.join("test"))?)
        }
    };
    Ok(Dataset { name: kind.name().into(), num_classes: kind.num_classes(), train, test, source: dir.display().to_string() })
}
