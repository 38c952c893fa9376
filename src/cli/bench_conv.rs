//! `fedolf bench conv`: every distinct convolution of the four models at their paper batch —
//! forward, input gradient (dX), weight gradient (dW) — timed through fedolf's kernels
//! (`fedolf-kernels`), through Burn's own CPU ops (the path the kernels replace), and through
//! PyTorch's `conv2d` / `conv2d_input` / `conv2d_weight` (`benches/pytorch_twin.py`) in the
//! same run, with seconds, GFLOP/s and ratios.

use std::time::Instant;

use anyhow::bail;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use fedolf::accounting::speed::{median, paired_ratio};
use fedolf::runtime::workers::available_cores;
use fedolf_kernels::peak::Peak;
use fedolf_kernels::{cpu, ConvGeometry};
use fedolf_models::{ConvShape, ModelOptions};
use serde_json::json;

use crate::bench_speed::PAPER_SETTINGS;
use crate::args::ConvArgs;
use crate::pytorch::{take_turn, untimed_calls, PyTorch, Session};

const OPS: [&str; 3] = ["forward", "dX", "dW"];

/// One distinct convolution and the models that run it.
struct Conv {
    models: Vec<&'static str>,
    batch: usize,
    shape: ConvShape,
    geometry: ConvGeometry,
}

impl Conv {
    fn label(&self) -> String {
        let [c, h, w] = self.shape.input;
        let [co, _, k, _] = self.shape.weight;
        format!("b{} {c}x{h}x{w} -> {co} k{k} s{} p{}", self.batch, self.shape.stride, self.shape.padding)
    }
}

/// Every distinct (batch, convolution) of the paper's models, input side first.
fn paper_convs() -> anyhow::Result<Vec<Conv>> {
    let mut convs: Vec<Conv> = Vec::new();
    for (model, input, classes, batch, _) in PAPER_SETTINGS {
        let net = model.init_with::<Flex>(input, classes, &ModelOptions::default(), &Default::default())?;
        for shape in net.conv_shapes() {
            if let Some(seen) = convs.iter_mut().find(|c| c.batch == batch && c.shape == shape) {
                if !seen.models.contains(&model.name()) {
                    seen.models.push(model.name());
                }
                continue;
            }
            let [c, h, w] = shape.input;
            let Some(geometry) = ConvGeometry::new([batch, c, h, w], shape.weight, [shape.stride; 2], [shape.padding; 2]) else {
                bail!("{} has a convolution the kernels cannot run: {shape:?}", model.name());
            };
            convs.push(Conv { models: vec![model.name()], batch, shape, geometry });
        }
    }
    Ok(convs)
}

/// Deterministic values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Median seconds of `f` over `repeats` calls after one warm-up call.
fn timed<T>(repeats: usize, mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// One convolution's [forward, dX, dW]: fedolf's median seconds, and with the twin its median
/// seconds and the paired ratio (fedolf ÷ PyTorch, see `paired_ratio`).
struct Timing {
    ours: [f64; 3],
    theirs: Option<[[f64; 2]; 3]>,
}

/// [forward, dX, dW] through fedolf's kernels, each call taking turns with the twin's same
/// call when it runs (who goes first alternating), after one warm-up turn.
fn time_ours(conv: &Conv, i: usize, repeats: usize, mut twin: Option<&mut Session>) -> anyhow::Result<Timing> {
    let g = &conv.geometry;
    let (x, w, dy) = (noise(g.batch * g.in_sample(), 1), noise(g.weight_len(), 2), noise(g.batch * g.out_sample(), 3));
    let call = |op: usize| {
        let started = Instant::now();
        match op {
            0 => drop(std::hint::black_box(cpu::forward(g, &x, &w, None))),
            1 => drop(std::hint::black_box(cpu::input_grad(g, &w, &dy))),
            _ => drop(std::hint::black_box(cpu::weight_grad(g, &x, &dy))),
        }
        started.elapsed().as_secs_f64()
    };
    let mut timing = Timing { ours: [0.0; 3], theirs: twin.is_some().then_some([[0.0; 2]; 3]) };
    for op in 0..OPS.len() {
        let (mut o, mut t) = (Vec::with_capacity(repeats), Vec::with_capacity(repeats));
        // Turn 0 is the warm-up, which sets how many untimed calls open each later turn.
        let mut untimed = if twin.is_some() { 1 } else { 0 };
        for turn in 0..=repeats.max(1) {
            let (ours_s, theirs_s) = take_turn(turn % 2 == 0, untimed, || call(op), twin.as_deref_mut().map(|s| move |u| s.conv(i, op, u)))?;
            match theirs_s {
                Some(theirs_s) if turn == 0 => untimed = untimed_calls(ours_s.min(theirs_s)),
                theirs_s if turn > 0 => {
                    o.push(ours_s);
                    t.extend(theirs_s);
                }
                _ => {}
            }
        }
        if let Some(theirs) = &mut timing.theirs {
            let ratio = paired_ratio(&o, &t).unwrap_or(f64::NAN);
            theirs[op] = [median(&mut t), ratio];
        }
        timing.ours[op] = median(&mut o);
    }
    Ok(timing)
}

/// [forward, dX, dW] seconds through Burn's own Flex ops (Flex's forward, Burn's generic
/// backward).
fn time_burn(conv: &Conv, repeats: usize) -> [f64; 3] {
    let g = &conv.geometry;
    let device = Default::default();
    let tensor = |v: Vec<f32>, shape: [usize; 4]| Tensor::<Flex, 4>::from_data(TensorData::new(v, shape), &device).into_primitive().tensor();
    let [kh, kw] = g.kernel;
    let x = tensor(noise(g.batch * g.in_sample(), 1), [g.batch, g.c_in, g.height, g.width]);
    let w = tensor(noise(g.weight_len(), 2), [g.c_out, g.c_in, kh, kw]);
    let dy = tensor(noise(g.batch * g.out_sample(), 3), [g.batch, g.c_out, g.out_height, g.out_width]);
    let options = ConvOptions::new(g.stride, g.padding, [1, 1], 1);
    [
        timed(repeats, || <Flex as ModuleOps<Flex>>::conv2d(x.clone(), w.clone(), None, options.clone())),
        timed(repeats, || <Flex as ModuleOps<Flex>>::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), options.clone())),
        timed(repeats, || <Flex as ModuleOps<Flex>>::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), options.clone())),
    ]
}

pub fn bench_conv(args: ConvArgs) -> anyhow::Result<()> {
    let cores = available_cores();
    let twin = PyTorch::find(args.python.clone(), cores);
    match &twin {
        Ok(t) => eprintln!("bench conv on the CPU ({cores} cores); PyTorch {} with {cores} threads ({})", t.version, t.python.display()),
        Err(why) => eprintln!("bench conv on the CPU ({cores} cores); no PyTorch ratios: {why}"),
    }
    // The limit every GFLOP/s below is read against: FMA chains on every core, measured now.
    let peak = fedolf_kernels::peak::measure(cores, std::time::Duration::from_millis(200));
    let convs = paper_convs()?;
    let specs: Vec<_> = convs.iter().map(|c| json!({"batch": c.batch, "input": c.shape.input, "weight": c.shape.weight, "stride": c.shape.stride, "padding": c.shape.padding})).collect();
    let mut session = match &twin {
        Ok(t) => {
            eprintln!("pytorch: building the {} convolutions ...", convs.len());
            Some(t.serve_convs(&specs)?)
        }
        Err(_) => None,
    };
    let mut timings = Vec::new();
    let mut burn = Vec::new();
    for (i, conv) in convs.iter().enumerate() {
        eprint!("  {} ({}) ... ", conv.label(), conv.models.join(","));
        timings.push(time_ours(conv, i, args.repeats, session.as_mut())?);
        if !args.no_burn {
            burn.push(time_burn(conv, args.repeats));
        }
        eprintln!("done");
    }
    drop(session);

    let against = match &twin {
        Ok(t) => format!("PyTorch {} ({} threads)", t.version, t.threads),
        Err(_) => "PyTorch: not installed, no ratios".to_string(),
    };
    println!("convolution kernels on the CPU, {cores} threads, median of {} calls (against {against}, each call taking turns with fedolf's)", args.repeats);
    println!("{}", Peak::header(peak, "fedolf's GFLOP/s ÷ the latter; pytorch's share beside it"));
    println!(
        "{:<34} {:<18} {:<7} {:>10} {:>8} {:>7} {:>10} {:>8} {:>10} {:>7} {:>8}",
        "convolution", "models", "op", "fedolf s", "GFLOP/s", "% peak", "burn s", "÷ burn", "pytorch s", "% peak", "ratio"
    );
    let share = |gflops: f64| Peak::share(peak, gflops);
    let mut totals = [[0.0f64; 3]; 3];
    for (i, conv) in convs.iter().enumerate() {
        let gflop = 2.0 * conv.geometry.macs() as f64 / 1e9;
        for (op, name) in OPS.iter().enumerate() {
            let ours = timings[i].ours[op];
            let burn = burn.get(i).map(|b| b[op]);
            let (torch, ratio) = timings[i].theirs.map(|t| (t[op][0], t[op][1])).unzip();
            totals[0][op] += ours;
            totals[1][op] += burn.unwrap_or(0.0);
            totals[2][op] += torch.unwrap_or(0.0);
            println!(
                "{:<34} {:<18} {:<7} {:>10.5} {:>8.1} {:>7} {:>10} {:>8} {:>10} {:>7} {:>8}",
                conv.label(),
                conv.models.join(","),
                name,
                ours,
                gflop / ours,
                share(gflop / ours),
                burn.map_or("-".into(), |b| format!("{b:.5}")),
                burn.map_or("-".into(), |b| format!("{:.1}×", b / ours)),
                torch.map_or("-".into(), |t| format!("{t:.5}")),
                torch.map_or("-".into(), |t| share(gflop / t)),
                ratio.map_or("-".into(), |r| format!("{r:.2}×")),
            );
        }
    }
    for (op, name) in OPS.iter().enumerate() {
        let [ours, burn, torch] = [totals[0][op], totals[1][op], totals[2][op]];
        println!(
            "{:<34} {:<18} {:<7} {:>10.5} {:>8} {:>7} {:>10} {:>8} {:>10} {:>7} {:>8}",
            "all shapes, summed",
            "",
            name,
            ours,
            "",
            "",
            if args.no_burn { "-".into() } else { format!("{burn:.5}") },
            if args.no_burn { "-".into() } else { format!("{:.1}×", burn / ours) },
            if twin.is_ok() { format!("{torch:.5}") } else { "-".into() },
            "",
            if twin.is_ok() { format!("{:.2}×", ours / torch) } else { "-".into() },
        );
    }
    println!("(÷ burn = Burn's seconds ÷ fedolf's: the speed-up of the kernels; ratio = fedolf ÷ pytorch, below 1 is faster: per row the median over the turns of each call's pair, summed: the sums' ratio)");
    Ok(())
}
