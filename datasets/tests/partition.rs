//! Partitions are disjoint, cover every sample, are seeded, and validate their arguments.

use fedolf_datasets::partition::{capacity_clusters, dirichlet, iid, DirichletSettings};
use rand::SeedableRng;

fn rng(s: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(s)
}

fn assert_disjoint_cover(parts: &[Vec<usize>], n: usize) {
    let mut seen = vec![false; n];
    for p in parts {
        for &i in p {
            assert!(!seen[i], "sample {i} assigned twice");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "some sample unassigned");
}

fn labels(n: usize, classes: u16) -> Vec<u16> {
    (0..n).map(|i| (i * 7 % classes as usize) as u16).collect()
}

#[test]
fn iid_is_disjoint_covering_and_balanced() {
    let parts = iid(1003, 10, &mut rng(1)).unwrap();
    assert_disjoint_cover(&parts, 1003);
    assert!(parts.iter().all(|p| p.len() == 100 || p.len() == 101));
    assert_eq!(parts, iid(1003, 10, &mut rng(1)).unwrap(), "seeded");
    assert_ne!(parts, iid(1003, 10, &mut rng(2)).unwrap());
}

#[test]
fn dirichlet_is_disjoint_covering_skewed_and_seeded() {
    let y = labels(6000, 10);
    let s = DirichletSettings { alpha: 0.1, min_size: 10, max_retries: 1000 };
    for seed in 0..5 {
        let parts = dirichlet(&y, 10, 50, s, &mut rng(seed)).unwrap();
        assert_disjoint_cover(&parts, 6000);
        assert!(parts.iter().all(|p| p.len() >= 10));
        assert_eq!(parts, dirichlet(&y, 10, 50, s, &mut rng(seed)).unwrap());
        // α = 0.1 is extreme skew: the typical client holds few classes.
        let classes_per_client: Vec<usize> = parts
            .iter()
            .map(|p| {
                let mut present = [false; 10];
                p.iter().for_each(|&i| present[y[i] as usize] = true);
                present.iter().filter(|&&b| b).count()
            })
            .collect();
        let mut sorted = classes_per_client.clone();
        sorted.sort();
        assert!(sorted[25] <= 4, "median classes per client {} at α=0.1", sorted[25]);
    }
    let iidish = dirichlet(&y, 10, 50, DirichletSettings { alpha: 1000.0, ..s }, &mut rng(0)).unwrap();
    assert!(iidish.iter().all(|p| (p.len() as i64 - 120).abs() < 40), "large α ≈ iid");
}

#[test]
fn bad_partition_arguments_are_errors() {
    let y = labels(100, 10);
    let s = DirichletSettings { alpha: 0.1, min_size: 5, max_retries: 10 };
    assert!(iid(10, 0, &mut rng(0)).unwrap_err().to_string().contains("clients = 0"));
    assert!(iid(10, 11, &mut rng(0)).is_err());
    let e = dirichlet(&y, 10, 10, DirichletSettings { alpha: -1.0, ..s }, &mut rng(0)).unwrap_err();
    assert!(e.to_string().contains("alpha = -1"), "{e}");
    let e = dirichlet(&y, 10, 30, s, &mut rng(0)).unwrap_err();
    assert!(e.to_string().contains("exceeds the 100 training samples"), "{e}");
    let e = dirichlet(&y, 10, 19, DirichletSettings { alpha: 0.01, min_size: 5, max_retries: 3 }, &mut rng(0)).unwrap_err();
    assert!(e.to_string().contains("in 3 tries"), "{e}");
}

#[test]
fn capacity_clusters_are_equal_and_random() {
    let c = capacity_clusters(100, 5, &mut rng(3)).unwrap();
    for i in 0..5 {
        assert_eq!(c.iter().filter(|&&x| x == i).count(), 20);
    }
    assert_ne!(c, capacity_clusters(100, 5, &mut rng(4)).unwrap());
    let c = capacity_clusters(7, 2, &mut rng(3)).unwrap();
    let ones = c.iter().filter(|&&x| x == 1).count();
    assert!(ones == 3 || ones == 4);
    assert!(capacity_clusters(3, 5, &mut rng(0)).is_err());
}
