//! A run folder on disk: the results files and summary ([`report`]), the checkpoint that
//! resume and export read ([`checkpoint`]), multi-seed trials ([`trials`]) and plots
//! ([`plot`]), the writer a run's results go through as it runs ([`run_writer`]), and the lock
//! that keeps a folder to one writer ([`lock`]).

pub mod checkpoint;
pub mod grid;
pub mod lock;
pub mod plot;
pub mod report;
pub mod run_writer;
pub mod trials;
