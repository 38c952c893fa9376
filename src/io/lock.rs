//! An advisory lock on a folder that one process writes (a run folder, a grid folder). A
//! second writer is refused before it writes anything, naming the folder and the process that
//! holds it; the OS drops the lock when its holder dies, so a killed run's folder resumes at
//! once, with nothing to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file the lock is taken on, inside the folder.
pub const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is being written by {holder}; nothing was changed (wait for it to end, or stop it first)", folder.display())]
    Held { folder: PathBuf, holder: String },
    #[error("{}: cannot lock it: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// Held while this process writes the folder; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Take the lock of `folder` (which must exist), or say who holds it.
    pub fn acquire(folder: &Path) -> Result<Self, LockError> {
        let path = folder.join(LOCK_FILE);
        let io = |source| LockError::Io { path: path.clone(), error: source };
        // Not truncated on open: a refused writer leaves the holder's line as it was.
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process".to_string() } else { holder.to_string() };
                return Err(LockError::Held { folder: folder.to_path_buf(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let command = std::env::args().take(2).map(|a| Path::new(&a).file_name().map_or(a.clone(), |n| n.to_string_lossy().into_owned())).collect::<Vec<_>>().join(" ");
        file.set_len(0).map_err(io)?;
        writeln!(file, "process {} ({command})", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}
