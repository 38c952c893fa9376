//! A client's round split across the wire (what a Flower deployment does: the server
//! prepares and sends the payload as host data, the node rebuilds and trains, the server
//! embeds the upload) gives bit-identical uploads and records to the simulator's one-piece
//! round, and the merged global model is the same. Bad payloads are refused by name.

mod common;

use common::{device, Train};
use fedolf::engine::round_context::{payload_to_device, payload_to_host};
use fedolf::config::{Config, DEFAULT_TOML};
use fedolf::engine::federation::Federation;
use fedolf::engine::data::load_dataset;

fn config(method: &str, extra: &[&str]) -> Config {
    let mut overrides: Vec<String> = [
        format!("method={method}"),
        "data.data_dir=datasets/data/fashion-mnist-subset".into(),
        "data.train_limit=900".into(),
        "data.test_limit=200".into(),
        "federation.clients=6".into(),
        "federation.clients_per_round=3".into(),
        "federation.clusters=3".into(),
        "federation.rounds=2".into(),
        "train.epochs=1".into(),
    ]
    .into();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Config::from_toml(DEFAULT_TOML, "default", &overrides).unwrap()
}

/// Round 1 of `cfg` both ways, client by client; then both merges.
fn both_ways_agree(cfg: &Config) {
    let dataset = load_dataset(cfg).unwrap();
    let dev = device();
    let mut one_piece = Federation::<Train>::new(cfg, &dataset, &dev).unwrap();
    let mut split = Federation::<Train>::new(cfg, &dataset, &dev).unwrap();
    let plans = one_piece.plans(1).unwrap();
    assert_eq!(plans, split.plans(1).unwrap());
    let host_global = one_piece.host_global();
    let clients = one_piece.round_context(1, None);
    let (mut sim_uploads, mut wire_uploads) = (Vec::new(), Vec::new());
    for plan in &plans {
        let start = one_piece.client_start(plan, &host_global);
        let start = start.as_deref().unwrap_or(&host_global);
        let indices = &one_piece.parts[plan.client];
        let sim = clients.run::<Train>(plan, start, indices, &dev).unwrap();

        // Server: prepare; the payload and the plan cross as host data / JSON.
        let prepared = clients.prepare::<Train>(plan, start, &dev).unwrap();
        let payload = payload_to_host(prepared.local.payload());
        let plan_on_node: fedolf::strategy::ClientPlan = serde_json::from_str(&serde_json::to_string(plan).unwrap()).unwrap();
        assert_eq!(&plan_on_node, plan);
        // Node: rebuild and train.
        let local = clients.rebuild::<Train>(&plan_on_node, &payload, &dev).unwrap();
        let trained = clients.train(&plan_on_node, local, prepared.bytes_down, indices, &dev).unwrap();
        let uploaded = payload_to_host(trained.layers);
        // Server: embed the upload.
        let layers = payload_to_device(&uploaded, &dev);
        let wire = clients.upload(plan, layers, indices.len() as f64, &prepared.start, &dev).unwrap();

        let what = format!("{} client {}", cfg.method, plan.client);
        assert_eq!(sim.upload, wire, "{what}: upload");
        assert_eq!(sim.frozen_bytes, prepared.frozen_bytes, "{what}: frozen bytes");
        let mut record = trained.record.clone();
        record.compute_s = sim.record.compute_s;
        assert_eq!(sim.record, record, "{what}: record");
        sim_uploads.push(sim.upload);
        wire_uploads.push(wire);
    }
    one_piece.merge(&sim_uploads, &plans).unwrap();
    split.merge(&wire_uploads, &plans).unwrap();
    assert_eq!(one_piece.host_global(), split.host_global(), "{}: merged model", cfg.method);
}

#[test]
fn fedolf_with_toa_is_the_same_across_the_wire() {
    let cfg = config("fedolf", &["toa.s=0.5"]);
    both_ways_agree(&cfg);
}

#[test]
fn heterofl_and_fedavg_are_the_same_across_the_wire() {
    both_ways_agree(&config("heterofl", &[]));
    both_ways_agree(&config("fedavg", &[]));
}

#[test]
fn a_payload_that_does_not_fit_the_plan_is_refused() {
    let cfg = config("fedolf", &["toa.s=0.5"]);
    let dataset = load_dataset(&cfg).unwrap();
    let dev = device();
    let fed = Federation::<Train>::new(&cfg, &dataset, &dev).unwrap();
    let plans = fed.plans(1).unwrap();
    let host_global = fed.host_global();
    let clients = fed.round_context(1, None);
    let plan = plans.iter().find(|p| p.frozen() == 0).expect("a client trains every layer");
    let prepared = clients.prepare::<Train>(plan, &host_global, &dev).unwrap();
    let mut payload = payload_to_host(prepared.local.payload());

    // A trained layer with the wrong shape: named in the error.
    payload[1].1[0].shape[0] += 1;
    let e = clients.rebuild::<Train>(plan, &payload, &dev).unwrap_err().to_string();
    assert!(e.contains("layer 1") && e.contains("shape"), "{e}");

    // A missing layer.
    let mut short = payload_to_host(prepared.local.payload());
    short.remove(2);
    let e = clients.rebuild::<Train>(plan, &short, &dev).unwrap_err().to_string();
    assert!(e.contains("layer 2"), "{e}");

    // A layer index beyond the model.
    let mut beyond = payload_to_host(prepared.local.payload());
    beyond.push((7, beyond[0].1.clone()));
    assert!(clients.rebuild::<Train>(plan, &beyond, &dev).is_err());
}
