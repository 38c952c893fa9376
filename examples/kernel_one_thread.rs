//! Profiling aid (not part of the product): the convolution kernels on one thread against the
//! one-thread FMA probe, and beside them the direct kernel's inner loop alone (2 channel blocks
//! × 8 pixels, weights and input in L1), so a kernel's shortfall from the probe splits into
//! what its FMA stream loses and what its loop nest, packing and stores cost.
//! `kernel_one_thread [shape index]`; experiments/results/speed-cpu.md reads it.
use std::hint::black_box as bb;
use std::time::{Duration, Instant};

use fedolf_kernels::{cpu, peak, ConvGeometry};

/// ResNet's 3×3 shapes at batch 128: (inputs, outputs, side, stride).
const SHAPES: [(usize, usize, usize, usize); 5] = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)];

fn best(mut f: impl FnMut(), repeats: usize) -> f64 {
    f();
    (0..repeats).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    }).fold(f64::MAX, f64::min)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn strip(w: &[f32], row: &[f32], taps: usize, repeats: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 8]; 2];
    for _ in 0..repeats {
        for t in 0..taps {
            // SAFETY: `w` holds 2 × `taps` vectors and `row` 64 + 8 floats.
            let wv: [__m512; 2] = std::array::from_fn(|n| unsafe { _mm512_loadu_ps(w.as_ptr().add((n * taps + t) * 16)) });
            for (u, x) in row[t % 64..t % 64 + 8].iter().enumerate() {
                let xv = _mm512_set1_ps(*x);
                for n in 0..2 {
                    acc[n][u] = _mm512_fmadd_ps(wv[n], xv, acc[n][u]);
                }
            }
        }
    }
    _mm512_reduce_add_ps(acc.iter().flatten().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
}

fn main() {
    let Some(probe) = peak::measure(1, Duration::from_millis(300)) else {
        println!("no FMA probe on this CPU");
        return;
    };
    let probe = probe.one_thread;
    println!("probe, 1 thread: {probe:.1} GFLOP/s");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        let (taps, repeats) = (144, 20_000);
        let (w, row) = (vec![0.001f32; 2 * taps * 16], vec![0.5f32; 72]);
        // SAFETY: this CPU has AVX-512F.
        let s = best(|| { bb(unsafe { strip(bb(&w), bb(&row), bb(taps), bb(repeats)) }); }, 5);
        let gflops = (2 * 8 * taps * repeats) as f64 * 32.0 / s / 1e9;
        println!("inner loop alone (2 blocks × 8 pixels, L1): {gflops:.1} GFLOP/s, {:.0} % of the probe", 100.0 * gflops / probe);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    let only: Option<usize> = std::env::args().nth(1).map(|a| a.parse().expect("a shape index"));
    for (i, &(ci, co, side, stride)) in SHAPES.iter().enumerate().filter(|(i, _)| only.is_none_or(|o| o == *i)) {
        let g = ConvGeometry::new([128, ci, side, side], [co, ci, 3, 3], [stride, stride], [1, 1]).expect("a valid shape");
        let x: Vec<f32> = (0..g.batch * g.in_sample()).map(|i| (i * 7919 % 1000) as f32 * 1e-3).collect();
        let w: Vec<f32> = (0..g.weight_len()).map(|i| (i * 104_729 % 1000) as f32 * 1e-3 - 0.5).collect();
        let dy: Vec<f32> = (0..g.batch * g.out_sample()).map(|i| (i * 31 % 1000) as f32 * 1e-3).collect();
        let [f, dx, dw] = pool.install(|| {
            [
                best(|| { bb(cpu::forward(&g, &x, &w, None)); }, 9),
                best(|| { bb(cpu::input_grad(&g, &w, &dy)); }, 9),
                best(|| { bb(cpu::weight_grad(&g, &x, &dy)); }, 9),
            ]
        });
        let share = |s: f64| 100.0 * 2.0 * g.macs() as f64 / s / 1e9 / probe;
        println!("[{i}] {ci} → {co}, {side} × {side}, stride {stride}: forward {:.0} %, input gradient {:.0} %, weight gradient {:.0} % of the probe", share(f), share(dx), share(dw));
    }
}
