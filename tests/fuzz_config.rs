//! Mutation fuzzing of the config parser: mutated valid configs (the built-in default and
//! every experiment file) give `Ok` with a config that passes its own checks, or `Err`
//! naming the config — never a panic.

use fedolf::config::{Config, DEFAULT_TOML};
use fedolf_datasets::mutation::Mutator;

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![DEFAULT_TOML.as_bytes().to_vec()];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            seeds.push(std::fs::read(path).unwrap());
        }
    }
    seeds
}

fn fuzz(n: usize, seed: u64) {
    let corpus = seeds();
    let mut m = Mutator::new(seed);
    for i in 0..n {
        let input = m.mutate(&corpus[i % corpus.len()], &corpus);
        let text = String::from_utf8_lossy(&input);
        let outcome = std::panic::catch_unwind(|| match Config::from_toml(&text, "fuzz.toml", &[]) {
            Ok(cfg) => {
                // A config that parsed must survive its own round trip.
                Config::from_toml(&cfg.to_toml(), "round-trip.toml", &[]).expect("a valid config re-parses");
            }
            Err(e) => assert!(e.to_string().starts_with("fuzz.toml"), "error does not name the config: {e}"),
        });
        assert!(outcome.is_ok(), "input {i} (seed {seed}) panicked:\n{text}");
    }
}

#[test]
fn config_parser_survives_mutated_files() {
    fuzz(3_000, 7);
}

/// The long run: `cargo test --release --test fuzz_config -- --ignored`.
#[test]
#[ignore]
fn config_parser_survives_a_hundred_thousand_mutated_files() {
    let started = std::time::Instant::now();
    fuzz(100_000, 20261201);
    eprintln!("fuzzed 100000 configs in {:.1} s", started.elapsed().as_secs_f64());
}
