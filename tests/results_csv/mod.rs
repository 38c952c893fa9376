//! The results files (`rounds.csv`, `clients.csv`) as the tests compare them: the columns
//! that time or measure the machine left out.

use std::path::Path;

/// The rows of a results CSV, header first, without `fedolf::io::report::TIMING_COLUMNS`.
pub fn without_timing(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<&str> = text.lines().next().unwrap_or_else(|| panic!("{}: empty", path.display())).split(',').collect();
    let keep: Vec<usize> = (0..header.len()).filter(|&i| !fedolf::io::report::TIMING_COLUMNS.contains(&header[i])).collect();
    text.lines()
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            keep.iter().map(|&i| cells.get(i).unwrap_or_else(|| panic!("{}: row `{line}` has {} cells, the header {}", path.display(), cells.len(), header.len())).to_string()).collect()
        })
        .collect()
}
