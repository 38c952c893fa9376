//! The `fedolf` binary: parse the command line, call the library, print the error chain.

#[cfg(feature = "flex")]
mod bench_conv;
#[cfg(feature = "flex")]
mod bench_parity;
mod bench_speed;
mod args;
mod export_cmd;
mod memory_cmd;
mod plot_cmd;
mod pytorch;
mod run_cmd;
mod table_cmd;

use clap::Parser;
use fedolf::runtime::memory::CountingAllocator;

/// Counts heap bytes so local training can report its peak (CPU backend).
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn main() {
    // Output piped into `head` ends the process quietly when the pipe closes, as Unix tools
    // do; Rust ignores SIGPIPE by default, so `println!` would panic instead. (Results files
    // are written before anything is printed.)
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // CubeCL's device thread logs "Task failed" when a device cannot start, on its own time,
    // after `backend::probe` has turned the panic into one error line; only its errors show.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,cubecl_common::device=error")).init();
    fedolf::runtime::heap_tuning::keep_freed_memory();
    let cli = args::Cli::parse();
    // A bare `fedolf` is `fedolf run`, parsed by clap so both paths share its defaults.
    let command = cli.command.unwrap_or_else(|| args::Cli::parse_from(["fedolf", "run"]).command.expect("`run` is a subcommand"));
    let result = match command {
        args::Command::Run(args) => run_cmd::run(args, &ALLOC),
        args::Command::List => {
            list();
            Ok(())
        }
        args::Command::Memory(args) => memory_cmd::memory(args, &ALLOC),
        args::Command::Bench { which: args::BenchKind::Memory { batch } } => memory_cmd::bench_memory(batch, &ALLOC),
        args::Command::Bench { which: args::BenchKind::Speed(args) } => bench_speed::bench_speed(args, &ALLOC),
        #[cfg(feature = "flex")]
        args::Command::Bench { which: args::BenchKind::Conv(args) } => bench_conv::bench_conv(args),
        #[cfg(not(feature = "flex"))]
        args::Command::Bench { which: args::BenchKind::Conv(_) } => Err(anyhow::anyhow!("`bench conv` times the CPU kernels: rebuild with the `flex` feature")),
        #[cfg(feature = "flex")]
        args::Command::Bench { which: args::BenchKind::Parity { device } } => bench_parity::bench_parity(&device),
        #[cfg(not(feature = "flex"))]
        args::Command::Bench { which: args::BenchKind::Parity { .. } } => Err(anyhow::anyhow!("`bench parity` compares a device with the CPU backend: rebuild with the `flex` feature")),
        args::Command::Table(args) => table_cmd::table(args, &ALLOC),
        args::Command::Plot { run_dir } => plot_cmd::plot(&run_dir),
        args::Command::Export { run_dir, out } => export_cmd::export(&run_dir, out.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn list() {
    use fedolf::runtime::backend::DeviceKind;
    use fedolf_datasets::DatasetKind;
    use fedolf_models::ModelKind;
    println!("methods:");
    for m in fedolf::strategy::METHODS {
        println!("  {:<14} {}", m.name, m.about);
        let options = (m.options)();
        if !options.is_empty() {
            println!("  {:<14} options (defaults): {}", "", options.join(", "));
        }
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
