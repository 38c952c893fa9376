//! One run's results as it goes: the rounds so far, rewritten whole after each round
//! (`rounds.csv`, `clients.csv`, each atomically), its checkpoints and its `summary.json`.
//! `fedolf run` (through its round observer) and the Flower server both write a run through
//! this, so a federated run's folder is the simulator's, file for file.

use serde::Serialize;

use super::checkpoint::{Checkpoint, CheckpointError};
use super::report::RunDir;
use crate::records::RoundRecord;

/// The writer of one run folder (or of none: a Flower server without an output folder keeps
/// its records only in memory). The caller holds the folder's lock.
pub struct RunWriter {
    dir: Option<RunDir>,
    records: Vec<RoundRecord>,
}

impl RunWriter {
    pub fn new(dir: RunDir) -> Self {
        Self { dir: Some(dir), records: Vec::new() }
    }

    /// Records kept in memory only.
    pub fn nowhere() -> Self {
        Self { dir: None, records: Vec::new() }
    }
    /// The rounds written so far.
    /// Where it writes, for messages.
    pub fn place(&self) -> String {
        self.dir.as_ref().map_or_else(|| "not written".into(), |d| d.path.display().to_string())
    }

    /// Where `name` inside the run folder is, for messages.
    pub fn place_of(&self, name: &str) -> String {
        self.dir.as_ref().map_or_else(|| "not written".into(), |d| d.path.join(name).display().to_string())
    }

    pub fn records(&self) -> &[RoundRecord] {
        &self.records
    }

    /// A resumed run: its results files hold exactly the checkpoint's rounds (rounds that
    /// ran after it, before the interruption, are about to run again with the same results).
    pub fn resume_from(&mut self, records: &[RoundRecord]) -> std::io::Result<()> {
        self.records = records.to_vec();
        self.write_rounds()
    }

    /// One more round.
    pub fn push(&mut self, record: RoundRecord) -> std::io::Result<()> {
        self.records.push(record);
        self.write_rounds()
    }

    fn write_rounds(&self) -> std::io::Result<()> {
        if let Some(dir) = &self.dir {
            dir.write_rounds(&self.records)?;
            dir.write_clients(&self.records)?;
        }
        Ok(())
    }

    pub fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        match &self.dir {
            Some(dir) => checkpoint.write(&dir.path),
            None => Ok(()),
        }
    }

    pub fn summary<S: Serialize>(&self, summary: &S) -> std::io::Result<()> {
        match &self.dir {
            Some(dir) => dir.write_summary(summary),
            None => Ok(()),
        }
    }
}
