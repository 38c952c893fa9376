use thiserror::Error;

/// Errors raised while building or slicing a layered model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    #[error("unknown model `{0}` (known: cnn, alexnet, resnet20, resnet44)")]
    UnknownModel(String),
    #[error("input shape {input:?} is too small for {model}: {reason}")]
    InputTooSmall { model: &'static str, input: [usize; 3], reason: String },
    #[error("num_classes must be at least 2, got {0}")]
    TooFewClasses(usize),
    #[error("layer range {from}..{to} is invalid for a model with {num_layers} layers")]
    BadRange { from: usize, to: usize, num_layers: usize },
    #[error("an exit after depth {depth} is impossible in a model of {num_layers} layers (exits sit after depths 1..{num_layers}, the classifier being the last)")]
    BadExit { depth: usize, num_layers: usize },
    #[error("host-side initialisation: parameter `{path}` is {what}, which has no host initialiser (add its distribution to host_init.rs)")]
    HostInit { path: String, what: String },
    #[error("TOA cannot {op} on a {layer} layer")]
    ToaUnsupported { layer: &'static str, op: &'static str },
}
