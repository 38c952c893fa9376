//! A run folder on disk: the results files and summary ([`report`]), the checkpoint that
//! resume and export read ([`checkpoint`]), multi-seed trials ([`trials`]) and plots
//! ([`plot`]).

pub mod checkpoint;
pub mod grid;
pub mod plot;
pub mod report;
pub mod trials;
