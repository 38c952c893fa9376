//! `fedolf bench parity --device D`: the wgpu tests' parity checks (`fedolf::accounting::parity`) on any
//! compiled-in device, as a table, failing when a check is outside the tolerance.

use anyhow::bail;
use burn::tensor::backend::AutodiffBackend;
use fedolf::runtime::backend::{probe, with_backend, BackendTask, DeviceKind};
use fedolf::accounting::parity::{step_parity, toa_parity, ParityError, ATOL, RTOL, SMALL_CASES};
use fedolf::compress::toa::ToaMode;

struct ParityTask;

impl BackendTask for ParityTask {
    /// Failed checks.
    type Output = Result<usize, ParityError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut failed = 0;
        println!("{:<9} {:>5} {:>3}  {:>5} {:>12} {:>12} {:>8} {:>8} {:>8}  worst tensor", "model", "batch", "l", "start", "loss cpu", "loss dev", "loss", "prefix", "weights");
        for case in &SMALL_CASES {
            let p = step_parity::<B>(case, &device)?;
            let ok = p.passes();
            failed += usize::from(!ok);
            println!(
                "{:<9} {:>5} {:>3}  {:>5} {:>12.7} {:>12.7} {:>8.3} {:>8.3} {:>8.3}  {}{}",
                case.model.name(),
                case.batch,
                case.frozen,
                if p.same_start { "same" } else { "DIFF" },
                p.loss_cpu,
                p.loss_device,
                p.loss_ratio(),
                p.prefix,
                p.weights.worst,
                p.weights.worst_at,
                if ok { "" } else if !p.frozen_untouched { "  FAIL (a frozen layer moved)" } else { "  FAIL" },
            );
        }
        for mode in [ToaMode::Paper, ToaMode::Topk] {
            let (agreement, same_sent) = toa_parity::<B>(mode, &device)?;
            let ok = same_sent && agreement.passes();
            failed += usize::from(!ok);
            println!(
                "TOA {:<8} alexnet l=4 s=0.5: sent {} elements, values {:.3} of the tolerance ({}){}",
                format!("{mode:?}"),
                if same_sent { "the same" } else { "DIFFERENT" },
                agreement.worst,
                agreement.worst_at,
                if ok { "" } else { "  FAIL" }
            );
        }
        Ok(failed)
    }
}

pub fn bench_parity(device: &str) -> anyhow::Result<()> {
    let kind = DeviceKind::parse(device)?;
    probe(kind)?;
    println!("parity: {} vs the CPU backend, same host-drawn weights and batch, one SGD step (lr 0.01, momentum 0.9); columns loss/prefix/weights are max |Δ| ÷ ({ATOL:e} + {RTOL:e}·max |cpu|), ≤ 1 passes", kind.name());
    let failed = with_backend(kind, ParityTask)??;
    if failed > 0 {
        bail!("{failed} parity check(s) on {} outside the tolerance", kind.name());
    }
    println!("all parity checks within the tolerance");
    Ok(())
}
