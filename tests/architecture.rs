//! The shape of the code, checked (ARCHITECTURE.md, "Layers"):
//! - `src/`: every top-level module imports only modules declared before it in `src/lib.rs`,
//!   so the layers have no circle and a new upward import fails here, naming file and line;
//! - inside a folder of `src/`, and among the files of `models/src`: no circle;
//! - no comment cites a document outside the repository.
//!
//! Imports are read as text: `use crate::…` (braced groups included) and inline
//! `crate::module::…` paths outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` whose name ends in one of `extensions`, sorted; hidden folders,
/// build output and recorded results are not the code's.
fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && !["target", "results", "__pycache__"].contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if extensions.iter().any(|e| name.ends_with(&format!(".{e}"))) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir, &["rs"])
}

/// The code of a line, without a trailing `//` comment; empty for comment lines.
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find("//") {
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

/// The first path segment of every `crate::` path on a line (`use crate::{a::X, b}` gives
/// `a` and `b`).
fn crate_modules(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code(line);
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// `(file, line number, imported module)` of every crate import in `files`.
fn imports(files: &[PathBuf]) -> Vec<(PathBuf, usize, String)> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Multi-line `use crate::{…}` groups are joined so their items are read.
        let mut pending: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            if let Some((start, mut joined)) = pending.take() {
                joined.push_str(code(line));
                if line.contains('}') {
                    out.extend(crate_modules(&joined).into_iter().map(|m| (file.clone(), start + 1, m)));
                } else {
                    pending = Some((start, joined));
                }
                continue;
            }
            let c = code(line);
            if c.contains("crate::{") && !c.contains('}') {
                pending = Some((n, c.to_string()));
                continue;
            }
            out.extend(crate_modules(c).into_iter().map(|m| (file.clone(), n + 1, m)));
        }
    }
    out
}

/// The top-level module a file of `src/` belongs to (`src/local/training.rs` → `local`).
fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// `src/lib.rs`'s `pub mod` declarations, in order: the layers, bottom first.
fn declared_layers(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect()
}

#[test]
fn src_layers_import_only_downward() {
    let src = root().join("src");
    let layers = declared_layers(&src);
    assert!(layers.len() >= 5, "src/lib.rs declares the layers as `pub mod` lines, bottom first; found {layers:?}");
    let rank: BTreeMap<&str, usize> = layers.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    // The binary (src/cli/) is its own crate: its `crate::` means the binary's root.
    let files: Vec<_> = rust_files(&src).into_iter().filter(|f| !f.starts_with(src.join("cli")) && !f.ends_with("lib.rs")).collect();
    let mut upward = Vec::new();
    for (file, line, target) in imports(&files) {
        let from = top_module(&src, &file);
        let (Some(&from_rank), Some(&to_rank)) = (rank.get(from.as_str()), rank.get(target.as_str())) else {
            assert!(rank.contains_key(from.as_str()), "{} is not under a module that src/lib.rs declares", file.display());
            continue;
        };
        if to_rank > from_rank {
            upward.push(format!("{}:{line} ({from}) imports crate::{target}, a layer above it", file.strip_prefix(root()).unwrap_or(&file).display()));
        }
    }
    assert!(upward.is_empty(), "imports that point up the layers (order: {}):\n{}", layers.join(" → "), upward.join("\n"));
}

#[test]
fn src_top_level_stays_small() {
    let entries: Vec<_> = std::fs::read_dir(root().join("src")).expect("src/").map(|e| e.expect("entry").file_name()).collect();
    assert!(entries.len() <= 13, "src/ has {} top-level entries; group new files into a concern folder: {entries:?}", entries.len());
}

/// A circle among `edges` (file → files it imports), as a path that returns to its start.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, edges: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, path: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == next).expect("on the path");
                    let mut circle = path[start..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// `(folder, file)` of every `crate::folder::file` path on a line whose `file` is a file of
/// that folder in `src/`.
fn folder_files(src: &Path, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = code(line);
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let segments: Vec<String> = rest
            .split("::")
            .take(2)
            .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
            .collect();
        if let [folder, file] = segments.as_slice() {
            if src.join(folder).join(format!("{file}.rs")).is_file() {
                out.push((folder.clone(), file.clone()));
            }
        }
    }
    out
}

#[test]
fn files_of_a_src_folder_have_no_import_circle() {
    let src = root().join("src");
    // `mod.rs` declares its folder's files and re-exports them: it is the folder's face, not
    // a file of the layering inside it.
    let files: Vec<_> = rust_files(&src).into_iter().filter(|f| !f.starts_with(src.join("cli")) && f.parent() != Some(src.as_path()) && !f.ends_with("mod.rs")).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let folder = top_module(&src, file);
        let name = file.file_stem().expect("a file").to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).expect("readable");
        for line in text.lines() {
            for (to_folder, to_file) in folder_files(&src, line) {
                if to_folder == folder && to_file != name {
                    edges.entry(format!("{folder}/{name}")).or_default().insert(format!("{folder}/{to_file}"));
                }
            }
        }
    }
    assert!(edges.len() >= 5, "imports between the files of a folder were not read: {edges:?}");
    if let Some(circle) = find_circle(&edges) {
        panic!("files of one src/ folder import each other in a circle: {}", circle.join(" → "));
    }
}

#[test]
fn models_files_have_no_import_circle() {
    let src = root().join("models").join("src");
    let files: Vec<_> = rust_files(&src).into_iter().filter(|f| !f.ends_with("lib.rs")).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, _, target) in imports(&files) {
        let from = top_module(&src, &file);
        if from != target {
            edges.entry(from).or_default().insert(target);
        }
    }
    assert!(edges.len() >= 3, "models/src imports were not read: {edges:?}");
    if let Some(circle) = find_circle(&edges) {
        panic!("models/src has an import circle: {}", circle.join(" → "));
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            e.entry(a.to_string()).or_default().insert(b.to_string());
        }
        e
    };
    assert_eq!(find_circle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(find_circle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(crate_modules("use crate::{records::RoundRecord, tensor::params::read_model};"), vec!["records", "tensor"]);
    assert_eq!(crate_modules("    let x = crate::local::training::sgd(); // crate::engine"), vec!["local"]);
    assert!(crate_modules("//! see [`crate::engine`]").is_empty());
}

#[test]
fn comments_cite_only_documents_in_the_repository() {
    // Project documents that lived outside the repository once; the repository's own are
    // ARCHITECTURE.md, README.md and the docs next to the code.
    let outside = ["DESIGN.md", "BASELINES.md", "BURN.md", "FLOWER.md", "DEVELOPERS.md"];
    let mut dirs = vec![root().join("src"), root().join("tests"), root().join("examples"), root().join("benches"), root().join("flower"), root().join("experiments")];
    for krate in ["models", "kernels", "datasets", "python"] {
        dirs.push(root().join(krate));
    }
    let mut found = Vec::new();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        for path in files_under(dir, &["rs", "py", "sh", "toml"]).into_iter().filter(|p| !p.ends_with("architecture.rs")) {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            for (n, line) in text.lines().enumerate() {
                if let Some(doc) = outside.iter().find(|d| line.contains(*d)) {
                    found.push(format!("{}:{}: cites {doc}", path.strip_prefix(root()).unwrap_or(&path).display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "comments cite documents that are not in the repository (point them to ARCHITECTURE.md or say it in place):\n{}", found.join("\n"));
}

#[test]
fn documents_cite_files_that_exist() {
    // Every repository path a document quotes (`src/…rs`, `tests/…`, …) names a file that is
    // there: the README, ARCHITECTURE.md and the recorded results.
    let prefixes = ["src/", "tests/", "models/", "kernels/", "datasets/", "python/", "flower/", "experiments/", "benches/", "examples/"];
    let extensions = [".rs", ".py", ".sh", ".toml"];
    let mut docs = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    docs.extend(files_under(&root().join("experiments/results"), &["md"]));
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (n, line) in text.lines().enumerate() {
            for quoted in line.split('`').skip(1).step_by(2) {
                let path = quoted.split("::").next().unwrap_or_default();
                let cited = prefixes.iter().any(|p| path.starts_with(p)) && extensions.iter().any(|e| path.ends_with(e)) && !path.contains(['*', ' ', '<']);
                if cited && !root().join(path).exists() {
                    missing.push(format!("{}:{}: `{path}`", doc.strip_prefix(root()).unwrap_or(doc).display(), n + 1));
                }
            }
        }
    }
    assert!(missing.is_empty(), "documents cite files that are not in the repository:\n{}", missing.join("\n"));
}
