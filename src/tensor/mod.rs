//! Model weights as data: the one walker over Burn's parameters ([`params`]), their host
//! copies that cross threads and processes ([`host`]), width-sliced sub-models
//! ([`submodel`]) and the layer-wise weighted average ([`aggregate`]).

pub mod aggregate;
pub mod host;
pub mod params;
pub mod submodel;
