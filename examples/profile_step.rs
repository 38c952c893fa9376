//! Profiling aid: median step time of one model (not part of the product).
use fedolf::models::ModelKind;
use fedolf::accounting::speed::{median_step_seconds, StepSpec};
type Train = burn::backend::Autodiff<burn::backend::Flex>;
fn main() {
    if std::env::var_os("FEDOLF_GLIBC_DEFAULTS").is_none() {
        fedolf::runtime::heap_tuning::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().collect();
    let model = ModelKind::parse(&args[1]).unwrap();
    let batch: usize = args[2].parse().unwrap();
    let frozen: usize = args[3].parse().unwrap();
    let (input, classes) = if model == ModelKind::Cnn { ([1, 28, 28], 10) } else { ([3, 32, 32], 100) };
    let spec = StepSpec { model, input, classes, batch, frozen, warmup: 1, repeats: args.get(4).map_or(3, |r| r.parse().unwrap()) };
    // FEDOLF_DEVICE=wgpu (built with `--features wgpu`) times the step on wgpu instead.
    #[cfg(feature = "wgpu")]
    if std::env::var("FEDOLF_DEVICE").as_deref() == Ok("wgpu") {
        type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;
        println!("{:.4}", median_step_seconds::<Gpu>(&spec, &Default::default()).unwrap());
        return;
    }
    println!("{:.4}", median_step_seconds::<Train>(&spec, &Default::default()).unwrap());
}
