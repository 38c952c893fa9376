//! The methods that cut depth or draw from a pool of sub-models: exit heads, DepthFL's and
//! ScaleFL's losses and widths, AdaptiveFL's pool, selection and reward tables, NeFL's skipped
//! blocks and BatchNorm banks. Hand-computed values say where they come from.

mod common;

use burn::prelude::*;
use common::*;
use fedolf::tensor::aggregate::LayerUpload;
use fedolf::local::roles::LayerRole;
use fedolf::local::training::LocalModel;
use fedolf::tensor::host::HostLayer;
use fedolf::models::{ExitKind, Features, ModelKind};
use fedolf::local::objective::Objective;
use fedolf::tensor::params::NamedTensor;
use fedolf::local::exit_losses::{mutual_distillation_loss, scaled_exits_loss};
use fedolf::strategy::PoolSelection;
use fedolf::strategy::{depthfl_weight, nefl_skipped_blocks, AdaptiveFl, AdaptiveFlTables, ADAPTIVEFL_WIDTHS, ClientPlan, NeFl, PlanContext, PoolModel, Strategy};
use rand::SeedableRng;

fn logits(rows: &[&[f32]]) -> Tensor<Inner, 2> {
    let (n, c) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.iter().flat_map(|r| r.iter().copied()).collect::<Vec<_>>(), [n, c]), &device())
}

fn labels(y: &[i64]) -> Tensor<Inner, 1, Int> {
    Tensor::from_data(TensorData::new(y.to_vec(), [y.len()]), &device())
}

fn scalar(t: Tensor<Inner, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(p, q)| p * (p / q).ln()).sum()
}

#[test]
fn exit_heads_give_logits_at_every_depth_of_every_model() {
    for kind in ModelKind::ALL {
        for (input, classes) in [([1, 28, 28], 10), ([3, 32, 32], 100)] {
            let net = seeded::<Inner>(kind, input, classes, 1);
            let n = net.num_layers();
            let depths: Vec<usize> = (1..n).collect();
            let net = net.with_exits(&depths, &device()).unwrap();
            assert_eq!(net.exits.len(), n - 1, "{}", kind.name());
            let (x, _) = random_batch::<Inner>(2, input, classes, 1);
            let outputs = net.forward_all_exits(x);
            assert_eq!(outputs.len(), n, "{}: one output per exit plus the classifier", kind.name());
            for (d, out) in outputs.iter().enumerate() {
                assert_eq!(out.dims(), [2, classes], "{} {input:?}: output after depth {}", kind.name(), d + 1);
            }
            // A depth 0 or N exit is refused with the depth named.
            let again = seeded::<Inner>(kind, input, classes, 2);
            let err = again.with_exits(&[n], &device()).unwrap_err().to_string();
            assert!(err.contains(&format!("depth {n}")), "{err}");
        }
    }
}

#[test]
fn resnet_exits_step_up_to_the_final_width() {
    // ResNet20 stages are 16, 32, 64 channels: an exit after block 1 (stage 1) needs two
    // stride-2 steps, after block 4 (stage 2) one, after block 7 (stage 3) none.
    let net = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 3).with_exits(&[1, 4, 7], &device()).unwrap();
    let steps: Vec<usize> = net
        .exits
        .iter()
        .map(|e| match &e.kind {
            ExitKind::Strided(s) => s.steps.len(),
            other => panic!("ResNet exits are strided, got {other:?}"),
        })
        .collect();
    assert_eq!(steps, vec![2, 1, 0]);
    // Models without exits hold none: FedOLF's model and bytes are unchanged.
    assert!(seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 4).exits.is_empty());
}

#[test]
fn depthfl_loss_matches_a_hand_computed_two_exit_example() {
    // z1 = [0, 0], z2 = [ln 3, 0], y = 0: p1 = [1/2, 1/2], p2 = [3/4, 1/4].
    let z1 = [0.0f64, 0.0];
    let z2 = [3f64.ln(), 0.0];
    let (p1, p2) = (softmax(&z1), softmax(&z2));
    for w in [1.0f32, 0.25] {
        // L = CE(z1) + w·KL(p2‖p1) + CE(z2) + w·KL(p1‖p2) (n − 1 = 1).
        let expected = -p1[0].ln() + w as f64 * kl(&p2, &p1) - p2[0].ln() + w as f64 * kl(&p1, &p2);
        let got = scalar(mutual_distillation_loss(&[logits(&[&[0.0, 0.0]]), logits(&[&[3f32.ln(), 0.0]])], labels(&[0]), w));
        assert!((got - expected).abs() < 1e-5, "w = {w}: {got} vs {expected}");
    }
    // One exit: plain cross-entropy.
    let single = scalar(mutual_distillation_loss(&[logits(&[&[3f32.ln(), 0.0]])], labels(&[0]), 1.0));
    assert!((single - (4.0f64 / 3.0).ln()).abs() < 1e-6);
    // w_t = exp(−5(1 − min(t,300)/300)²): e^−5 at 0, e^−1.25 at 150, 1 from 300 on.
    assert!((depthfl_weight(0) as f64 - (-5f64).exp()).abs() < 1e-7);
    assert!((depthfl_weight(150) as f64 - (-1.25f64).exp()).abs() < 1e-6);
    assert_eq!((depthfl_weight(300), depthfl_weight(900)), (1.0, 1.0));
}

#[test]
fn scalefl_loss_weights_exits_by_depth_and_distills_from_the_deepest() {
    let zs: [[f64; 3]; 3] = [[0.2, -0.1, 0.4], [1.0, 0.0, -1.0], [2.0, 0.5, 0.1]];
    let y = 1usize;
    let outputs: Vec<Tensor<Inner, 2>> = zs.iter().map(|z| logits(&[&z.map(|v| v as f32)])).collect();
    let ce = |z: &[f64]| -softmax(z)[y].ln();
    // γ = 0: (1·CE1 + 2·CE2 + 3·CE3) / 6.
    let plain = (ce(&zs[0]) + 2.0 * ce(&zs[1]) + 3.0 * ce(&zs[2])) / 6.0;
    let got = scalar(scaled_exits_loss(&outputs, labels(&[y as i64]), 0.0, 3.0));
    assert!((got - plain).abs() < 1e-5, "{got} vs {plain}");
    // γ = 1, T = 3: exits j < n add j·γT²·KL(softmax(z_n/T) ‖ softmax(z_j/T)).
    let t = 3.0;
    let soft = |z: &[f64; 3]| softmax(&z.map(|v| v / t));
    let kd = 1.0 * t * t * (kl(&soft(&zs[2]), &soft(&zs[0])) + 2.0 * kl(&soft(&zs[2]), &soft(&zs[1]))) / 6.0;
    let got = scalar(scaled_exits_loss(&outputs, labels(&[y as i64]), 1.0, 3.0));
    assert!((got - (plain + kd)).abs() < 1e-5, "{got} vs {}", plain + kd);
}

#[test]
fn scalefl_turns_distillation_on_at_a_quarter_of_the_rounds() {
    let net = seeded::<Inner>(ModelKind::Cnn, [1, 28, 28], 10, 5);
    let layout = net.channel_spaces();
    let scalefl = strategy("scalefl", &[]);
    let objective_at = |round| {
        let ctx = PlanContext { num_layers: 3, capacities: 2, round, rounds: 100, layout: &layout };
        scalefl.plan(&ctx, 0, 0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap().objective
    };
    // Rounds 1..=25 (the first quarter) train without KD; from round 26 on γ = 1.
    assert_eq!(objective_at(25), Objective::ScaledExits { gamma: 0.0, temperature: 3.0 });
    assert_eq!(objective_at(26), Objective::ScaledExits { gamma: 1.0, temperature: 3.0 });
    // The weak cluster keeps 2 of 3 layers (its exit after conv block 2).
    let ctx = PlanContext { num_layers: 3, capacities: 2, round: 1, rounds: 100, layout: &layout };
    let plan = scalefl.plan(&ctx, 0, 0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
    assert_eq!(plan.roles, vec![LayerRole::Trained, LayerRole::Trained, LayerRole::Skipped]);
}

#[test]
fn scalefl_widths_match_a_share_of_the_parameters() {
    // Each cluster's depth-cut, width-scaled sub-model (its exits included) holds about i/c
    // of the full model's parameters; where the depth cut alone is already below that share
    // (AlexNet: its FC layers hold most parameters), the width stays 1.
    for (kind, clusters) in [(ModelKind::ResNet20, 5), (ModelKind::AlexNet, 5), (ModelKind::Cnn, 2)] {
        let plain = seeded::<Inner>(kind, [3, 32, 32], 10, 6);
        let n = plain.num_layers();
        let full: usize = plain.layers.iter().map(fedolf::tensor::params::layer_numel).sum();
        let depths: Vec<usize> = (1..clusters).map(|l| n - l).collect();
        let net = plain.with_exits(&depths, &device()).unwrap();
        let layout = net.channel_spaces();
        let widths = fedolf::strategy::scalefl_matched_widths(&net, &layout, clusters, &device());
        assert_eq!(widths[clusters - 1], 1.0);
        // The strongest level is the whole model (with every exit).
        for (cluster, &w) in widths.iter().enumerate().take(clusters - 1) {
            let depth = n - (clusters - 1 - cluster);
            let sub = fedolf::tensor::submodel::extract(net.clone(), &layout, &fedolf::tensor::submodel::WidthSpec::prefix(&layout, w), &device());
            let held: usize = sub.layers[..depth].iter().map(fedolf::tensor::params::layer_numel).sum::<usize>()
                + sub.exits.iter().filter(|e| e.after <= depth).map(fedolf::tensor::params::layer_numel).sum::<usize>();
            let target = full as f64 * (cluster + 1) as f64 / clusters as f64;
            let share = held as f64 / target;
            assert!(
                (w == 1.0 && share <= 1.0) || (share - 1.0).abs() < 0.05,
                "{} cluster {cluster}: width {w} holds {held} parameters for a target of {target:.0}",
                kind.name()
            );
        }
        if kind == ModelKind::ResNet20 {
            assert!(widths[0] < 1.0, "ResNet20's weakest level must narrow: {widths:?}");
        }
    }
}

/// A pool with these parameter counts and levels (width = the level's).
fn pool_of(params: &[usize], levels: &[usize]) -> Vec<PoolModel> {
    params.iter().zip(levels).map(|(&p, &level)| PoolModel { width: ADAPTIVEFL_WIDTHS[level], level, split: 1, params: p }).collect()
}

#[test]
fn adaptivefl_falls_back_to_the_largest_pool_model_that_fits() {
    let pool = pool_of(&[10, 40, 70, 100], &[0, 0, 1, 2]);
    use fedolf::strategy::adaptivefl_fitting_model as fit;
    assert_eq!(fit(&pool, 3, 50.0).params, 40, "100 does not fit 50: the largest that does is 40");
    assert_eq!(fit(&pool, 0, 50.0).params, 10, "a drawn model that fits is kept");
    assert_eq!(fit(&pool, 2, 100.0).params, 70);
    assert_eq!(fit(&pool, 3, 5.0).params, 10, "nothing fits: the smallest");
    // Through the strategy (`uniform`: the client's own draw): a weak client (budget 1/4 of
    // the parameters) never trains more than that.
    let net = seeded::<Inner>(ModelKind::Cnn, [1, 28, 28], 10, 7);
    let layout = net.channel_spaces();
    let (pool, full) = fedolf::strategy::adaptivefl_pool(&net, &layout, &device());
    let strategy = AdaptiveFl::new(Some((pool.clone(), full)), PoolSelection::Uniform);
    let ctx = PlanContext { num_layers: 3, capacities: 4, round: 1, rounds: 10, layout: &layout };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    assert!(Strategy::<Train>::select(&strategy, &ctx, &[0, 1], &[0, 3], 2, &mut rng).is_none(), "uniform: the engine samples");
    let mut narrowed = 0;
    for _ in 0..20 {
        let plan = Strategy::<Train>::plan(&strategy, &ctx, 0, 0, &mut rng).unwrap();
        let Some(width) = plan.width.as_ref() else { panic!("a weak client trains the full model") };
        let sub = fedolf::tensor::submodel::extract(net.clone(), &layout, width, &device());
        let params: usize = sub.layers.iter().map(fedolf::tensor::params::layer_numel).sum();
        assert!(params as f64 <= full as f64 / 4.0 || params == pool[0].params, "{params} > {}", full / 4);
        narrowed += 1;
    }
    assert_eq!(narrowed, 20);
}

#[test]
fn adaptivefl_pool_is_the_official_seven_models() {
    // Kept-full depths: VGG16's 4, 6, 8 of 13 convolutions, as shares of N.
    assert_eq!(fedolf::strategy::adaptivefl_depths(7), vec![2, 3, 4]);
    assert_eq!(fedolf::strategy::adaptivefl_depths(10), vec![3, 5, 6]);
    assert_eq!(fedolf::strategy::adaptivefl_depths(3), vec![1, 2]);
    let net = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 11);
    let layout = net.channel_spaces();
    let (pool, full) = fedolf::strategy::adaptivefl_pool(&net, &layout, &device());
    let mut shape: Vec<(usize, usize)> = pool.iter().map(|m| (m.level, m.split)).collect();
    shape.sort_unstable();
    assert_eq!(shape, vec![(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (2, 2)], "widths × depths, the full model once");
    assert!(pool.iter().all(|m| m.width == ADAPTIVEFL_WIDTHS[m.level]));
    assert!(pool.windows(2).all(|w| w[0].params < w[1].params), "ascending size (the order the official fall-back assumes): {pool:?}");
    assert_eq!(pool[6].params, full, "width 1 is the full model");
    // A width-0.4 model keeps about 0.4² of the narrowed layers' weights.
    assert!(pool[0].params as f64 > 0.16 * full as f64 && (pool[0].params as f64) < 0.25 * full as f64, "{} of {full}", pool[0].params);
}

/// AlexNet's (3×32×32) layout, its AdaptiveFL pool and its parameter count.
fn alexnet_pool() -> (fedolf::models::SpaceLayout, Vec<PoolModel>, usize) {
    let net = seeded::<Inner>(ModelKind::AlexNet, [3, 32, 32], 10, 11);
    let layout = net.channel_spaces();
    let (pool, full) = fedolf::strategy::adaptivefl_pool(&net, &layout, &device());
    (layout, pool, full)
}

/// `rounds` rounds of `strategy.select` over 100 clients of 5 clusters (client k in cluster
/// k mod 5), 10 a round, each followed by the merge (which is when `reward` learns); per
/// round, the pool index each plan trains.
fn adaptivefl_rounds(strategy: &mut AdaptiveFl, pool: &[PoolModel], layout: &fedolf::models::SpaceLayout, num_layers: usize, rounds: usize, full: usize) -> Vec<Vec<usize>> {
    let clusters: Vec<usize> = (0..100).map(|k| k % 5).collect();
    let candidates: Vec<usize> = (0..100).collect();
    let specs: Vec<Option<fedolf::tensor::submodel::WidthSpec>> = pool
        .iter()
        .map(|m| {
            let w = fedolf::tensor::submodel::WidthSpec::prefix_after(layout, m.split, m.width);
            (!w.is_full(layout)).then_some(w)
        })
        .collect();
    (1..=rounds)
        .map(|round| {
            let ctx = PlanContext { num_layers, capacities: 5, round, rounds, layout };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round as u64);
            let plans = Strategy::<Train>::select(strategy, &ctx, &candidates, &clusters, 10, &mut rng).expect("the strategy selects").unwrap();
            let mut clients: Vec<usize> = plans.iter().map(|p| p.client).collect();
            clients.dedup();
            assert_eq!(clients.len(), 10, "ten distinct clients a round");
            let trained: Vec<usize> = plans
                .iter()
                .map(|p| {
                    let m = specs.iter().position(|s| *s == p.width).expect("a plan trains a pool model");
                    let budget = full as f64 * (clusters[p.client] + 1) as f64 / 5.0;
                    assert!(pool[m].params as f64 <= budget || m == 0, "client {} trains {} > {budget}", p.client, pool[m].params);
                    m
                })
                .collect();
            Strategy::<Train>::merge(strategy, &[], &[], &plans).unwrap();
            trained
        })
        .collect()
}

#[test]
fn adaptivefl_available_gives_each_slot_a_client_that_can_train_its_drawn_model() {
    // The drawn model is uniform over the pool and some client of the round can train each
    // one (20 clients of the strongest cluster, 10 slots), so every model is trained in 1/7
    // of the slots; a client drawn first and fitted after would train the full model in
    // 1/7 · 1/5 of them.
    let (layout, pool, full) = alexnet_pool();
    let mut strategy = AdaptiveFl::new(Some((pool.clone(), full)), PoolSelection::Available);
    let trained = adaptivefl_rounds(&mut strategy, &pool, &layout, 7, 350, full);
    let mut counts = [0usize; 7];
    trained.iter().flatten().for_each(|&m| counts[m] += 1);
    // 3500 slots: 500 each, σ ≈ 20.7.
    for (m, &n) in counts.iter().enumerate() {
        assert!((420..=580).contains(&n), "model {m} trained in {n} of 3500 slots: {counts:?}");
    }
    assert!(Strategy::<Train>::state(&strategy).is_empty(), "available keeps no tables");
}

#[test]
fn adaptivefl_reward_tables_follow_the_official_updates() {
    let pool = pool_of(&[10, 40, 70, 100], &[0, 0, 1, 2]);
    // Sent the full model, could train only model 1: +3 there, −1, −2 above (floor 0).
    let mut t = AdaptiveFlTables::new(4);
    t.learn(&pool, 3, 1, false);
    assert_eq!(t.resource, vec![1.0, 4.0, 0.0, 0.0]);
    assert_eq!(t.count, vec![2.0, 1.0, 2.0], "the levels of the sent and the trained model");
    // Level 0 = models 0 and 1: suffix sums 5 and 4 of 5 → 0.9, capped at 0.5, over √2.
    assert!((t.reward(&pool, 0) - 0.5 / 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(t.reward(&pool, 1), 0.0);
    assert_eq!(t.reward(&pool, 2), 0.0);
    // Sent the full model and trained it: +1 from it on, +3 more for the full model.
    let mut t = AdaptiveFlTables::new(4);
    t.learn(&pool, 3, 3, true);
    assert_eq!(t.resource, vec![1.0, 1.0, 1.0, 5.0]);
    assert_eq!(t.count, vec![1.0, 1.0, 3.0]);
    assert!((t.reward(&pool, 2) - 0.5 / 3f64.sqrt()).abs() < 1e-12, "5/8 capped at 0.5, over √3");
    assert!((t.reward(&pool, 1) - (6.0 / 8.0f64).min(0.5)).abs() < 1e-12);
    t.learn(&pool, 2, 2, true);
    assert_eq!(t.resource, vec![1.0, 1.0, 2.0, 6.0]);
    assert_eq!(t.count, vec![1.0, 3.0, 3.0]);
}

#[test]
fn adaptivefl_reward_learns_which_clients_train_the_full_model_and_resumes() {
    // At first every client is as likely for every slot, so a full-model slot meets a client
    // of the strongest cluster 1 time in 5 and the others fall back; the tables learn who
    // can, and late rounds send the full model to those who train it.
    let (layout, pool, full) = alexnet_pool();
    let mut strategy = AdaptiveFl::new(Some((pool.clone(), full)), PoolSelection::Reward);
    let trained = adaptivefl_rounds(&mut strategy, &pool, &layout, 7, 400, full);
    let share = |rounds: &[Vec<usize>]| rounds.iter().flatten().filter(|&&m| m == 6).count() as f64 / (10 * rounds.len()) as f64;
    let (early, late) = (share(&trained[..50]), share(&trained[350..]));
    // Without learning the share stays at 1/7 · 1/5 ≈ 0.029 (the curiosity term keeps the
    // heuristic exploring, so it does not reach 1/7 either).
    assert!(early < 0.045 && late > 0.06, "full-model share of the slots: {early:.3} in rounds 1–50, {late:.3} in rounds 351–400");
    let weak = strategy.tables(0).expect("client 0 was selected");
    assert_eq!(weak.resource[6], 0.0, "the weakest client learnt that the full model does not fit: {weak:?}");
    // Resume: the tables travel through the checkpoint's state and the next round is the same.
    let state = Strategy::<Train>::state(&strategy);
    assert_eq!(state.len(), 3);
    let mut resumed = AdaptiveFl::new(Some((pool.clone(), full)), PoolSelection::Reward);
    Strategy::<Train>::restore_state(&mut resumed, state).unwrap();
    for k in 0..100 {
        assert_eq!(resumed.tables(k), strategy.tables(k));
    }
    assert_eq!(adaptivefl_rounds(&mut resumed, &pool, &layout, 7, 3, full), adaptivefl_rounds(&mut strategy, &pool, &layout, 7, 3, full));
    let mut broken = Strategy::<Train>::state(&strategy);
    broken[1].shape = vec![1, 2];
    assert!(Strategy::<Train>::restore_state(&mut resumed, broken).unwrap_err().contains("AdaptiveFL state"));
}

#[test]
fn depthfl_clients_upload_their_layers_and_the_exits_they_hold() {
    // CNN, c = 2: the weak client keeps conv blocks 1–2 and the exit after block 2 (global
    // entry 3 = N + 0); it neither runs nor uploads the classifier.
    let global = seeded::<Train>(ModelKind::Cnn, [1, 28, 28], 10, 8).with_exits(&[2], &device()).unwrap();
    let local = LocalModel::from_roles(&global, &[LayerRole::Trained, LayerRole::Trained, LayerRole::Skipped]).unwrap();
    let uploaded: Vec<usize> = local.trained_layers().into_iter().map(|(i, _)| i).collect();
    assert_eq!(uploaded, vec![0, 1, 3]);
    let (x, _) = random_batch::<Inner>(3, [1, 28, 28], 10, 2);
    assert_eq!(local.forward(x).dims(), [3, 10]);
    // A cut without an exit head there is refused.
    let plain = seeded::<Train>(ModelKind::Cnn, [1, 28, 28], 10, 9);
    assert!(LocalModel::from_roles(&plain, &[LayerRole::Trained, LayerRole::Trained, LayerRole::Skipped]).is_err());
}

#[test]
fn nefl_skips_the_deepest_identity_blocks_and_a_skipped_block_is_the_identity() {
    let global = seeded::<Train>(ModelKind::ResNet20, [3, 32, 32], 10, 10);
    let layout = global.channel_spaces();
    // ResNet20 layers: 0 stem+block 1, 1–2 stage 1, 3 (downsampling) 4–5 stage 2, 6
    // (downsampling) 7–8 stage 3, 9 head. Identity blocks deepest first: 8, 7, 5, 4.
    assert_eq!(nefl_skipped_blocks(&layout, 4).unwrap(), vec![8, 7, 5, 4]);
    assert!(nefl_skipped_blocks(&layout, 7).is_err(), "only six blocks can be skipped");
    let mut roles = vec![LayerRole::Trained; 10];
    roles[8] = LayerRole::Skipped;
    roles[7] = LayerRole::Skipped;
    let local = LocalModel::from_roles(&global, &roles).unwrap();
    let (x, _) = random_batch::<Inner>(4, [3, 32, 32], 10, 5);
    let skipped = to_vec(&local.forward(x.clone()));
    // The same layers without blocks 7 and 8, run directly (training-mode BN both times).
    let h = global.forward_range(Features::Map(Tensor::from_inner(x)), 0, 7).unwrap();
    let direct = to_vec(&global.forward_range(h, 9, 10).unwrap().into_flat());
    assert!(max_abs_diff(&skipped, &direct) < 1e-5);
    // Skipped layers are not uploaded.
    let uploaded: Vec<usize> = local.trained_layers().into_iter().map(|(i, _)| i).collect();
    assert_eq!(uploaded, vec![0, 1, 2, 3, 4, 5, 6, 9]);
}

fn named(name: &str, values: &[f32]) -> NamedTensor<Inner> {
    NamedTensor { name: name.into(), shape: vec![values.len()], value: Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device()) }
}

fn upload(weight: f64, gamma: f32, w: f32) -> LayerUpload<Inner> {
    LayerUpload::whole(weight, vec![(0, vec![named("Conv.bn.gamma", &[gamma]), named("Conv.conv.weight", &[w])])])
}

fn level_plan(client: usize, bank: Option<usize>) -> ClientPlan {
    ClientPlan::new(client, bank.unwrap_or(2), vec![LayerRole::Trained]).with_bn_bank(bank)
}

#[test]
fn nefl_plans_train_their_own_levels_bank_and_the_full_level_the_global_bn() {
    // ResNet20, c = 3: clusters 0 and 1 skip blocks and train their level's bank; cluster 2
    // (nothing skipped) trains the global model's BatchNorm.
    let layout = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 12).channel_spaces();
    let ctx = PlanContext { num_layers: 10, capacities: 3, round: 1, rounds: 10, layout: &layout };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let banks: Vec<Option<usize>> = (0..3).map(|cluster| Strategy::<Train>::plan(&NeFl::default(), &ctx, cluster, cluster, &mut rng).unwrap().bn_bank).collect();
    assert_eq!(banks, vec![Some(0), Some(1), None]);
}

fn start_value(strategy: &NeFl, plan: &ClientPlan, global: &[HostLayer], name: &str) -> f32 {
    let start = Strategy::<Train>::client_start(strategy, plan, global).unwrap_or_else(|| global.to_vec());
    start[0].iter().find(|t| t.name == name).unwrap().values[0]
}

#[test]
fn nefl_batch_norm_banks_average_only_within_their_level() {
    let global = vec![vec![named("Conv.bn.gamma", &[1.0]), named("Conv.conv.weight", &[0.0])]];
    let mut nefl = NeFl::default();
    // Level 0: two clients (weights 1 and 3); the full level (no bank): one client.
    let plans = [level_plan(0, Some(0)), level_plan(1, Some(0)), level_plan(2, None)];
    let uploads = [upload(1.0, 2.0, 4.0), upload(3.0, 6.0, 8.0), upload(4.0, 10.0, 12.0)];
    let merged = Strategy::<Train>::merge(&mut nefl, &global, &uploads, &plans).unwrap();
    let layer = merged[0].as_ref().unwrap();
    // Shared weight: MWA over all three, (4 + 24 + 48) / 8 = 9.5. Global BN = the full level's only: 10.
    assert_eq!(to_vec(&layer[1].value), vec![9.5]);
    assert_eq!(to_vec(&layer[0].value), vec![10.0]);
    let host: Vec<HostLayer> = merged.into_iter().map(|l| fedolf::tensor::host::layer_to_host(l.unwrap())).collect();
    // Level 0's bank: (2 + 18) / 4 = 5, downloaded with the shared weight.
    assert_eq!(start_value(&nefl, &plans[0], &host, "Conv.bn.gamma"), 5.0);
    assert_eq!(start_value(&nefl, &plans[0], &host, "Conv.conv.weight"), 9.5);
    // Level 1 has trained nothing: its bank is the initial BN.
    assert_eq!(start_value(&nefl, &level_plan(5, Some(1)), &host, "Conv.bn.gamma"), 1.0);
    // A level-1 upload moves level 1's bank, never level 0's nor the global BN.
    let global2: Vec<_> = host.iter().map(|l| fedolf::tensor::host::layer_to_device::<Inner>(l, &device())).collect();
    let merged2 = Strategy::<Train>::merge(&mut nefl, &global2, &[upload(1.0, 7.0, 1.0)], &[level_plan(6, Some(1))]).unwrap();
    assert_eq!(to_vec(&merged2[0].as_ref().unwrap()[0].value), vec![10.0]);
    let host2: Vec<HostLayer> = merged2.into_iter().map(|l| fedolf::tensor::host::layer_to_host(l.unwrap())).collect();
    assert_eq!(start_value(&nefl, &plans[0], &host2, "Conv.bn.gamma"), 5.0);
    assert_eq!(start_value(&nefl, &level_plan(6, Some(1)), &host2, "Conv.bn.gamma"), 7.0);
}

#[test]
fn nefl_state_round_trips_through_a_checkpoint() {
    // The banks after a merge, saved and restored into a fresh strategy, give the same
    // downloads (what `--resume` relies on).
    let global = vec![vec![named("Conv.bn.gamma", &[1.0]), named("Conv.conv.weight", &[0.0])]];
    let mut nefl = NeFl::default();
    let plans = [level_plan(0, Some(0)), level_plan(1, Some(1)), level_plan(2, None)];
    let uploads = [upload(1.0, 2.0, 4.0), upload(3.0, 6.0, 8.0), upload(4.0, 10.0, 12.0)];
    let merged = Strategy::<Train>::merge(&mut nefl, &global, &uploads, &plans).unwrap();
    let host: Vec<HostLayer> = merged.into_iter().map(|l| fedolf::tensor::host::layer_to_host(l.unwrap())).collect();
    let state = Strategy::<Train>::state(&nefl);
    assert!(state.iter().all(|t| t.name.starts_with("bank/") || t.name.starts_with("initial/")), "{state:?}");
    let mut restored = NeFl::default();
    Strategy::<Train>::restore_state(&mut restored, state.clone()).unwrap();
    for plan in [level_plan(7, Some(0)), level_plan(8, Some(1)), level_plan(9, Some(3))] {
        assert_eq!(start_value(&nefl, &plan, &host, "Conv.bn.gamma"), start_value(&restored, &plan, &host, "Conv.bn.gamma"));
    }
    assert_eq!(Strategy::<Train>::state(&restored).len(), state.len());
    // A stateless method refuses a state it did not write.
    let mut fedavg = strategy("fedavg", &[]);
    assert!(fedavg.restore_state(state).is_err());
}
