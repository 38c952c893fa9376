//! Regenerate `data/fashion-mnist-subset/` from a full Fashion-MNIST copy:
//! `cargo run -p fedolf-datasets --example make_fashion_subset -- /usr/share/datasets/fashion-mnist 10000 2000`
//! Keeps the first N train and M test images (the original order), gzipped IDX.

use std::path::Path;

use fedolf_datasets::idx::{read_idx_pair, write_idx};
use fedolf_datasets::shipped_subset_dir;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let src = Path::new(args.get(1).map(String::as_str).unwrap_or("/usr/share/datasets/fashion-mnist"));
    let n_train: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let n_test: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let out = shipped_subset_dir();
    std::fs::create_dir_all(&out)?;
    for (split, n) in [("train", n_train), ("t10k", n_test)] {
        let mut set = read_idx_pair(
            &src.join(format!("{split}-images-idx3-ubyte.gz")),
            &src.join(format!("{split}-labels-idx1-ubyte.gz")),
            10,
            0,
            false,
        )?;
        set.truncate(n);
        let [_, h, w] = set.shape;
        write_idx(&out.join(format!("{split}-images-idx3-ubyte.gz")), &[set.len(), h, w], &set.pixels, true)?;
        let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
        write_idx(&out.join(format!("{split}-labels-idx1-ubyte.gz")), &[set.len()], &labels, true)?;
        println!("{split}: {} images -> {}", set.len(), out.display());
    }
    Ok(())
}
