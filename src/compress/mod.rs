//! What shrinks the download of the frozen prefix: FedOLF's Tensor Operation Approximation
//! ([`toa`]) and QSGD quantization ([`qsgd`]).

pub mod qsgd;
pub mod toa;
