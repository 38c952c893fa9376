//! The `fedolf` binary: parse the command line, call the library, print the error chain.

#[cfg(feature = "flex")]
mod bench_conv;
#[cfg(feature = "flex")]
mod bench_parity;
mod bench_speed;
mod cli;
mod memory_cmd;
mod pytorch;
mod run_cmd;

use clap::Parser;
use fedolf::memory::CountingAllocator;

/// Counts heap bytes so local training can report its peak (CPU backend).
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    fedolf::heap_tuning::keep_freed_memory();
    let cli = cli::Cli::parse();
    // A bare `fedolf` is `fedolf run`, parsed by clap so both paths share its defaults.
    let command = cli.command.unwrap_or_else(|| cli::Cli::parse_from(["fedolf", "run"]).command.expect("`run` is a subcommand"));
    let result = match command {
        cli::Command::Run(args) => run_cmd::run(args, &ALLOC),
        cli::Command::List => {
            list();
            Ok(())
        }
        cli::Command::Memory(args) => memory_cmd::memory(args, &ALLOC),
        cli::Command::Bench { which: cli::BenchKind::Memory { batch } } => memory_cmd::bench_memory(batch, &ALLOC),
        cli::Command::Bench { which: cli::BenchKind::Speed(args) } => bench_speed::bench_speed(args, &ALLOC),
        #[cfg(feature = "flex")]
        cli::Command::Bench { which: cli::BenchKind::Conv(args) } => bench_conv::bench_conv(args),
        #[cfg(not(feature = "flex"))]
        cli::Command::Bench { which: cli::BenchKind::Conv(_) } => Err(anyhow::anyhow!("`bench conv` times the CPU kernels: rebuild with the `flex` feature")),
        #[cfg(feature = "flex")]
        cli::Command::Bench { which: cli::BenchKind::Parity { device } } => bench_parity::bench_parity(&device),
        #[cfg(not(feature = "flex"))]
        cli::Command::Bench { which: cli::BenchKind::Parity { .. } } => Err(anyhow::anyhow!("`bench parity` compares a device with the CPU backend: rebuild with the `flex` feature")),
        cli::Command::Plot { run_dir } => memory_cmd::plot(&run_dir),
        cli::Command::Export { run_dir, out } => run_cmd::export(&run_dir, out.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn list() {
    use fedolf::backend::DeviceKind;
    use fedolf::config::Method;
    use fedolf_datasets::DatasetKind;
    use fedolf_models::ModelKind;
    println!("methods:");
    for m in Method::ALL {
        println!("  {:<14} {}", m.name(), m.description());
    }
    println!("models:");
    for m in ModelKind::ALL {
        println!("  {:<14} {}", m.name(), m.description());
    }
    println!("datasets:");
    for d in DatasetKind::ALL {
        println!("  {:<14} {}", d.name(), d.description());
    }
    let devices: Vec<_> = DeviceKind::compiled().iter().map(|d| d.name()).collect();
    println!("devices compiled in: {}", devices.join(", "));
}
