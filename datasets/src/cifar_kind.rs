//! Which CIFAR: its classes, and its files in the binary and the python versions. The binary
//! reader (`cifar.rs`) and the python reader (`cifar_python.rs`) both take one.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    pub(crate) fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    pub fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    /// The python version's folder (torchvision's download).
    pub fn python_folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-py",
            Self::Cifar100 => "cifar-100-python",
        }
    }

    /// The python version's files: the training batches and the test batch (no extension).
    pub fn python_files(self) -> (Vec<String>, &'static str) {
        match self {
            Self::Cifar10 => ((1..=5).map(|i| format!("data_batch_{i}")).collect(), "test_batch"),
            Self::Cifar100 => (vec!["train".into()], "test"),
        }
    }

    /// The python version's label entry (CIFAR-100: the fine labels).
    pub fn pickle_label_key(self) -> &'static str {
        match self {
            Self::Cifar10 => "labels",
            Self::Cifar100 => "fine_labels",
        }
    }

    pub fn train_files(self) -> Vec<String> {
        match self {
            Self::Cifar10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Self::Cifar100 => vec!["train.bin".into()],
        }
    }

    pub fn test_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "test_batch.bin",
            Self::Cifar100 => "test.bin",
        }
    }
}
