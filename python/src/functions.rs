//! Stateless pieces of the core, one call each: a model's initial weights, a FedOLF plan, TOA
//! on a frozen prefix, layer-wise (masked) aggregation. Each calls the function the simulator
//! calls.

use burn::module::AutodiffModule;
use fedolf::tensor::aggregate::{aggregate_layerwise, LayerUpload};
use fedolf::engine::round_context::payload_to_device;
use fedolf::local::roles::ordered_roles;
use fedolf::tensor::host::{layer_to_device, layer_to_host, model_to_host};
use fedolf::tensor::params::{read_model, write_model};
use fedolf::runtime::rng::{stream, Purpose};
use fedolf::strategy::{facts, ClientPlan};
use fedolf::compress::toa::{sparsify_prefix, ToaMode, ToaSettings};
use fedolf_models::{LayeredNet, ModelKind, ModelOptions};
use pyo3::prelude::*;

use crate::wire::{from_wire, model_from_wire, model_to_wire, to_wire, WireTensor};
use crate::{py_err, Train};

type Inner = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;

fn init_model(model: &str, input_shape: [usize; 3], classes: usize, seed: u64, method: Option<&str>, clusters: usize) -> PyResult<LayeredNet<Train>> {
    let device = Default::default();
    let kind = ModelKind::parse(model).map_err(py_err)?;
    let exits = match method {
        Some(m) => (facts(m).map_err(py_err)?.exit_depths)(kind.num_layers(), clusters),
        None => Vec::new(),
    };
    // As the simulator seeds its global model (engine/federation.rs): on the host, layers before exits.
    kind.init_on_host(input_shape, classes, &ModelOptions::default(), &exits, &mut stream(seed, Purpose::Init, 0, 0), &device).map_err(py_err)
}

/// The initial weights of `model` for images `input_shape` = `(c, h, w)` and `classes`
/// outputs, seeded as the simulator seeds its global model (default model options; a
/// multi-exit `method` adds its exit heads after the layers).
#[pyfunction]
#[pyo3(signature = (model, input_shape, classes, seed, method=None, clusters=5))]
pub fn init_weights<'py>(
    py: Python<'py>,
    model: &str,
    input_shape: (usize, usize, usize),
    classes: usize,
    seed: u64,
    method: Option<&str>,
    clusters: usize,
) -> PyResult<Vec<WireTensor<'py>>> {
    let (c, h, w) = input_shape;
    let net = init_model(model, [c, h, w], classes, seed, method, clusters)?;
    Ok(model_to_wire(py, &model_to_host(read_model(&net.valid()))))
}

/// FedOLF's plan for one client as JSON: layers `[0, frozen)` frozen outside the graph, the
/// rest trained and uploaded; the prefix downloaded in full (TOA runs on the server).
#[pyfunction]
#[pyo3(signature = (num_layers, frozen, client=0, cluster=0))]
pub fn ordered_plan(num_layers: usize, frozen: usize, client: usize, cluster: usize) -> PyResult<String> {
    let roles = ordered_roles(num_layers, frozen).map_err(py_err)?;
    serde_json::to_string(&ClientPlan::new(client, cluster, roles)).map_err(py_err)
}

/// TOA (paper Alg. 2) on the frozen prefix `prefix` (layers `0..l` of `model`'s weights), with
/// the random stream the simulator uses for (`seed`, `round`, `client`). Returns the layers
/// as sent (kept channels only, so smaller shapes), and the element counts in full and sent.
#[pyfunction]
#[pyo3(signature = (model, input_shape, classes, prefix, s, seed, round, client, mode="paper"))]
#[allow(clippy::too_many_arguments)]
pub fn toa_sparsify<'py>(
    py: Python<'py>,
    model: &str,
    input_shape: (usize, usize, usize),
    classes: usize,
    prefix: Vec<WireTensor<'py>>,
    s: f64,
    seed: u64,
    round: u64,
    client: u64,
    mode: &str,
) -> PyResult<(Vec<WireTensor<'py>>, usize, usize)> {
    let (c, h, w) = input_shape;
    let net = init_model(model, [c, h, w], classes, 0, None, 1)?;
    let n = net.num_layers();
    let layers = from_wire(&prefix, "prefix")?;
    let l = layers.len();
    if layers.iter().enumerate().any(|(i, (at, _))| i != *at) || l >= n {
        return Err(py_err(format!("prefix: layers 0..l of a {n}-layer model (l < {n}) are needed, got {:?}", layers.iter().map(|(i, _)| i).collect::<Vec<_>>())));
    }
    let mode: ToaMode = serde_json::from_value(serde_json::Value::String(mode.to_string())).map_err(|_| py_err(format!("unknown TOA mode `{mode}` (paper, crs, bernoulli, topk)")))?;
    let settings = ToaSettings::new(s, mode).map_err(py_err)?;
    let device = Default::default();
    let mut params: Vec<Option<_>> = vec![None; n];
    for (i, layer) in &layers {
        params[*i] = Some(layer_to_device::<Train>(layer, &device));
    }
    let net = write_model(net, &params).map_err(py_err)?;
    let (prefix_net, _) = net.valid().split_at(l).map_err(py_err)?;
    let mut rng = stream(seed, Purpose::Toa, round, client);
    let (sparse, report) = sparsify_prefix(prefix_net, settings, &mut rng).map_err(py_err)?;
    let sent: Vec<_> = read_model(&sparse).into_iter().map(layer_to_host::<Inner>).enumerate().collect();
    Ok((to_wire(py, &sent), report.frozen_full_elems, report.frozen_sent_elems))
}

/// Layer-wise masked weighted averaging (the FedOLF server rule) of `uploads` over
/// `global` (a whole model). Each upload is `(weight, tensors of the layers it trained,
/// masks)`, masks being `None` (whole layers) or one 0/1 mask per uploaded tensor, as
/// `(layer, name, shape, bytes)` like the values. Layers nobody uploaded keep their value.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn aggregate<'py>(
    py: Python<'py>,
    global: Vec<WireTensor<'py>>,
    uploads: Vec<(f64, Vec<WireTensor<'py>>, Option<Vec<WireTensor<'py>>>)>,
) -> PyResult<Vec<WireTensor<'py>>> {
    let device = Default::default();
    let layers = from_wire(&global, "global")?;
    let n = layers.len();
    let global = model_from_wire(&global, n, "global")?;
    let global_dev: Vec<_> = global.iter().map(|layer| layer_to_device::<Inner>(layer, &device)).collect();
    let mut device_uploads = Vec::with_capacity(uploads.len());
    for (k, (weight, tensors, masks)) in uploads.iter().enumerate() {
        let values = from_wire(tensors, &format!("upload {k}"))?;
        let layers = payload_to_device::<Inner>(&values, &device);
        let upload = match masks {
            None => LayerUpload::whole(*weight, layers),
            Some(masks) => {
                let masks = from_wire(masks, &format!("upload {k} masks"))?;
                if masks.iter().map(|(l, m)| (*l, m.len())).ne(values.iter().map(|(l, v)| (*l, v.len()))) {
                    return Err(py_err(format!("upload {k}: masks must cover the same layers and tensors as the values")));
                }
                let masks = masks.iter().map(|(_, layer)| layer_to_device::<Inner>(layer, &device).into_iter().map(|t| t.value).collect()).collect();
                LayerUpload::masked(*weight, layers, masks)
            }
        };
        device_uploads.push(upload);
    }
    let merged = aggregate_layerwise(&global_dev, &device_uploads).map_err(py_err)?;
    let model: Vec<_> = merged.into_iter().zip(global).map(|(m, old)| m.map_or(old, layer_to_host)).collect();
    Ok(model_to_wire(py, &model))
}

/// The devices compiled into these bindings (`cpu`, and `wgpu` / `cuda` when built with them).
#[pyfunction]
fn devices() -> Vec<&'static str> {
    fedolf::runtime::backend::DeviceKind::compiled().into_iter().map(|d| d.name()).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_weights, m)?)?;
    m.add_function(wrap_pyfunction!(ordered_plan, m)?)?;
    m.add_function(wrap_pyfunction!(toa_sparsify, m)?)?;
    m.add_function(wrap_pyfunction!(aggregate, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    Ok(())
}
