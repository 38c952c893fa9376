//! A run folder on disk: the results files and summary ([`report`]), the checkpoint that
//! resume and export read ([`checkpoint`]), multi-seed trials ([`trials`]) and plots
//! ([`plot`]), and the lock that keeps a folder to one writer ([`lock`]).

pub mod checkpoint;
pub mod grid;
pub mod lock;
pub mod plot;
pub mod report;
pub mod trials;
