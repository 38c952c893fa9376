//! Readers on small files written in the exact distributed formats, plus their failure modes.

#[path = "../../tests/scratch/mod.rs"]
mod scratch;

use std::path::Path;

use fedolf_datasets::cifar::{read_cifar, CifarKind};
use fedolf_datasets::cifar_python::parse_cifar_pickle;
use fedolf_datasets::cinic::{read_cinic_split, CLASSES};
use fedolf_datasets::idx::{read_idx_pair, write_idx};
use fedolf_datasets::{load, DataError, DatasetKind};

fn write_pair(dir: &Path, prefix: &str, n: usize, gzip: bool) {
    let pixels: Vec<u8> = (0..n * 28 * 28).map(|i| (i % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let ext = if gzip { ".gz" } else { "" };
    write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &[n, 28, 28], &pixels, gzip).unwrap();
    write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &[n], &labels, gzip).unwrap();
}

#[test]
fn idx_raw_and_gzipped_read_back() {
    for gzip in [false, true] {
        let dir = scratch::tempdir().unwrap();
        write_pair(dir.path(), "train", 12, gzip);
        write_pair(dir.path(), "t10k", 5, gzip);
        let ds = load(DatasetKind::FashionMnist, Some(dir.path())).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (12, 5));
        assert_eq!(ds.train.shape, [1, 28, 28]);
        assert_eq!(ds.train.labels[..4], [0, 1, 2, 3]);
        assert_eq!(ds.train.pixels[..3], [0, 1, 2]);
        assert_eq!(ds.train.pixels.len(), 12 * 784);
    }
}

#[test]
fn emnist_images_are_transposed_upright() {
    let dir = scratch::tempdir().unwrap();
    // One 2×3 image stored column-major (as EMNIST does): bytes 0..6.
    write_idx(&dir.path().join("img"), &[1, 2, 3], &[0, 1, 2, 3, 4, 5], false).unwrap();
    write_idx(&dir.path().join("lab"), &[1], &[7], false).unwrap();
    let set = read_idx_pair(&dir.path().join("img"), &dir.path().join("lab"), 47, 0, true).unwrap();
    assert_eq!(set.shape, [1, 3, 2]);
    assert_eq!(set.pixels, vec![0, 3, 1, 4, 2, 5]);
}

fn err_text(e: DataError) -> String {
    e.to_string()
}

#[test]
fn idx_failures_name_the_file_and_the_problem() {
    let dir = scratch::tempdir().unwrap();
    let d = dir.path();
    write_pair(d, "train", 4, false);
    let images = d.join("train-images-idx3-ubyte");
    let labels = d.join("train-labels-idx1-ubyte");
    // Truncated data.
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 10]).unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("truncated"), "{e}");
    // Truncated header.
    std::fs::write(&images, [0u8, 0, 8]).unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("truncated IDX header"), "{e}");
    // Wrong magic (e.g. a PNG renamed).
    std::fs::write(&images, b"\x89PNG\r\n\x1a\n....").unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("not an IDX file"), "{e}");
    // Corrupt gzip.
    std::fs::write(&images, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("corrupt gzip"), "{e}");
    // Count mismatch.
    write_pair(d, "train", 4, false);
    write_idx(&labels, &[3], &[1, 2, 3], false).unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("4 images") && e.contains("3 labels"), "{e}");
    // Label out of range.
    write_idx(&labels, &[4], &[1, 2, 3, 12], false).unwrap();
    let e = err_text(read_idx_pair(&images, &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("label 12 at index 3"), "{e}");
    // Missing file.
    let e = err_text(read_idx_pair(&d.join("nope"), &labels, 10, 0, false).unwrap_err());
    assert!(e.contains("nope"), "{e}");
}

fn cifar_record(label_bytes: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label_bytes.to_vec();
    r.extend((0..3072).map(|i| (i as u8).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_and_cifar100_binary_read_back() {
    let root = scratch::tempdir().unwrap();
    let d10 = root.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&d10).unwrap();
    for i in 1..=5 {
        let bytes = [cifar_record(&[i as u8], i as u8), cifar_record(&[9], 0)].concat();
        std::fs::write(d10.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(d10.join("test_batch.bin"), cifar_record(&[3], 7)).unwrap();
    let ds = load(DatasetKind::Cifar10, Some(root.path())).unwrap();
    assert_eq!((ds.train.len(), ds.test.len(), ds.num_classes), (10, 1, 10));
    assert_eq!(ds.train.labels[..2], [1, 9]);
    assert_eq!(ds.test.pixels[..2], [7, 8], "R plane first, row-major");
    assert_eq!(ds.test.pixels[1024], 7, "G plane starts at byte 1024");

    let d100 = root.path().join("cifar-100-binary");
    std::fs::create_dir(&d100).unwrap();
    std::fs::write(d100.join("train.bin"), [cifar_record(&[4, 77], 0), cifar_record(&[19, 99], 1)].concat()).unwrap();
    std::fs::write(d100.join("test.bin"), cifar_record(&[0, 5], 2)).unwrap();
    let ds = load(DatasetKind::Cifar100, Some(root.path())).unwrap();
    assert_eq!(ds.train.labels, vec![77, 99], "fine labels");
    assert_eq!(ds.num_classes, 100);
}

#[test]
fn cifar_failures_name_the_file() {
    let root = scratch::tempdir().unwrap();
    let d = root.path();
    std::fs::write(d.join("test_batch.bin"), &cifar_record(&[1], 0)[..2000]).unwrap();
    let e = err_text(read_cifar(d, CifarKind::Cifar10).unwrap_err());
    assert!(e.contains("data_batch_1.bin"), "missing batch named: {e}");
    for i in 1..=5 {
        std::fs::write(d.join(format!("data_batch_{i}.bin")), cifar_record(&[1], 0)).unwrap();
    }
    let e = err_text(read_cifar(d, CifarKind::Cifar10).unwrap_err());
    assert!(e.contains("test_batch.bin") && e.contains("not a whole number"), "{e}");
    std::fs::write(d.join("test_batch.bin"), cifar_record(&[10], 0)).unwrap();
    let e = err_text(read_cifar(d, CifarKind::Cifar10).unwrap_err());
    assert!(e.contains("label 10"), "{e}");
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn cinic_png_folders_read_back_and_fail_clearly() {
    let root = scratch::tempdir().unwrap();
    for split in ["train", "valid", "test"] {
        for (c, class) in CLASSES.iter().enumerate() {
            let dir = root.path().join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            let rgb: Vec<u8> = (0..32 * 32).flat_map(|_| [c as u8, 100, 200]).collect();
            write_png(&dir.join("a.png"), 32, 32, png::ColorType::Rgb, &rgb);
            write_png(&dir.join("b.png"), 32, 32, png::ColorType::Grayscale, &[50u8; 1024]);
        }
    }
    let ds = load(DatasetKind::Cinic10, Some(root.path())).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (20, 20));
    assert_eq!(ds.train.labels[..4], [0, 0, 1, 1]);
    let img = &ds.train.pixels[3 * 1024 * 2..3 * 1024 * 3]; // class 1, a.png
    assert_eq!((img[0], img[1024], img[2048]), (1, 100, 200), "CHW planes");
    let gray = &ds.train.pixels[3 * 1024..3 * 1024 * 2];
    assert!(gray.iter().all(|&p| p == 50), "grayscale replicated to 3 channels");

    let bad = root.path().join("test").join("cat").join("c.png");
    write_png(&bad, 16, 16, png::ColorType::Rgb, &[0u8; 16 * 16 * 3]);
    let e = err_text(read_cinic_split(&root.path().join("test")).unwrap_err());
    assert!(e.contains("c.png") && e.contains("16×16"), "{e}");
    std::fs::write(&bad, b"not a png").unwrap();
    let e = err_text(read_cinic_split(&root.path().join("test")).unwrap_err());
    assert!(e.contains("c.png") && e.contains("PNG"), "{e}");
}

#[test]
fn missing_dataset_lists_where_it_looked() {
    let dir = scratch::tempdir().unwrap();
    let e = err_text(load(DatasetKind::Cifar10, Some(dir.path())).unwrap_err());
    assert!(e.contains("cifar10") && e.contains(&dir.path().display().to_string()) && e.contains("--data-dir"), "{e}");
}

#[test]
fn shipped_fashion_mnist_subset_is_real_and_complete() {
    let ds = load(DatasetKind::FashionMnist, Some(&fedolf_datasets::shipped_subset_dir())).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (10_000, 2_000));
    let mut counts = [0usize; 10];
    for &l in &ds.train.labels {
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "every class present: {counts:?}");
}

/// Files `experiments/generate_cifar.py --format both` wrote (numpy 2, protocol 2): the same
/// images and labels in the binary and the python version.
fn generated() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cifar-generated")
}

/// A CIFAR-10 python batch written as the originals were: Python 2.7's cPickle, protocol 2,
/// numpy 1.16 (3 images, pixel `i` of the batch = `i mod 251`, labels 0, 5, 9).
fn python2_batch() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cifar10-python2-cpickle.pkl")).unwrap()
}

#[test]
fn cifar_python_and_binary_versions_hold_the_same_images() {
    for (kind, dataset, binary, python, sizes) in [
        (CifarKind::Cifar10, DatasetKind::Cifar10, "cifar-10-batches-bin", "cifar-10-batches-py", (10, 4)),
        (CifarKind::Cifar100, DatasetKind::Cifar100, "cifar-100-binary", "cifar-100-python", (6, 3)),
    ] {
        let (train_b, test_b) = read_cifar(&generated().join(binary), kind).unwrap();
        let (train_p, test_p) = read_cifar(&generated().join(python), kind).unwrap();
        assert_eq!((train_p.len(), test_p.len()), sizes, "{python}");
        assert_eq!((&train_p.labels, &train_p.pixels), (&train_b.labels, &train_b.pixels), "{python}: train differs from {binary}");
        assert_eq!((&test_p.labels, &test_p.pixels), (&test_b.labels, &test_b.pixels), "{python}: test differs from {binary}");
        // Found in --data-dir as torchvision leaves it: a folder holding only the python one.
        let root = scratch::tempdir().unwrap();
        let folder = root.path().join(python);
        std::fs::create_dir(&folder).unwrap();
        for entry in std::fs::read_dir(generated().join(python)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
        }
        let loaded = load(dataset, Some(root.path())).unwrap();
        assert_eq!(loaded.train.pixels, train_b.pixels);
        assert_eq!(loaded.source, folder.display().to_string());
    }
}

#[test]
fn a_python2_cpickle_batch_reads_as_written() {
    let mut set = fedolf_datasets::ImageSet { shape: [3, 32, 32], pixels: Vec::new(), labels: Vec::new() };
    parse_cifar_pickle(Path::new("test_batch"), &python2_batch(), CifarKind::Cifar10, &mut set).unwrap();
    assert_eq!(set.labels, vec![0, 5, 9]);
    assert_eq!(set.pixels, (0..3 * 3072).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
}

#[test]
fn malformed_cifar_pickles_are_refused_naming_the_file() {
    let good = python2_batch();
    let edit = |from: &[u8], to: &[u8]| {
        let at = good.windows(from.len()).position(|w| w == from).unwrap();
        [&good[..at], to, &good[at + from.len()..]].concat()
    };
    let cifar100 = std::fs::read(generated().join("cifar-100-python/test")).unwrap();
    for (what, bytes, kind, wants) in [
        ("truncated", good[..good.len() / 2].to_vec(), CifarKind::Cifar10, "not a readable pickle"),
        ("empty", Vec::new(), CifarKind::Cifar10, "not a readable pickle"),
        ("a list, not a dict", b"\x80\x02]q\x00.".to_vec(), CifarKind::Cifar10, "no dict"),
        ("label 10", edit(b"K\x00K\x05K\x09", b"K\x00K\x05K\x0a"), CifarKind::Cifar10, "`labels`[2]"),
        ("a wider row", edit(b"M\x00\x0c", b"M\x01\x0c"), CifarKind::Cifar10, "shape [3, 3073]"),
        ("CIFAR-100 read as CIFAR-10", cifar100, CifarKind::Cifar10, "no `labels` entry"),
        ("CIFAR-10 read as CIFAR-100", good.clone(), CifarKind::Cifar100, "no `fine_labels` entry"),
    ] {
        let mut set = fedolf_datasets::ImageSet { shape: [3, 32, 32], pixels: Vec::new(), labels: Vec::new() };
        let e = err_text(parse_cifar_pickle(Path::new("cifar/data_batch_3"), &bytes, kind, &mut set).unwrap_err());
        assert!(e.contains("cifar/data_batch_3") && e.contains(wants), "{what}: {e}");
        assert!(set.labels.is_empty() && set.pixels.is_empty(), "{what}: a refused file left images behind");
    }
}
