"""FedOLF as a Flower app: Flower moves messages; fedolf's Rust core (the `fedolf` module)
plans, compresses, trains and merges exactly as `fedolf run` does."""
