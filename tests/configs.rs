//! Every config in experiments/ parses, validates, and means what its file name says (the
//! grid files beside them, with `[[row]]`s, are `fedolf table`'s, checked in tests/table.rs).

use fedolf::config::{Config, PartitionKind};

#[test]
fn every_experiment_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let (mut n, mut paper) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Grid files (`fedolf table`: rows of `[[row]]`) are checked in tests/table.rs.
        if !text.contains("[[row]]") {
            let cfg = Config::from_toml(&text, &path.display().to_string(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_str().unwrap();
            if let Some(rest) = stem.strip_prefix("paper-") {
                // paper-<dataset>-<model>.toml is Table III (non-iid); the -iid twin Table II.
                let (column, iid) = match rest.strip_suffix("-iid") {
                    Some(column) => (column, true),
                    None => (rest, false),
                };
                assert_eq!(format!("{}-{}", cfg.data.dataset, cfg.model.name), column);
                assert_eq!((cfg.federation.clients, cfg.federation.clients_per_round, cfg.federation.rounds, cfg.train.epochs), (100, 10, 500, 5));
                if iid {
                    assert_eq!(cfg.data.partition, PartitionKind::Iid, "{stem}");
                } else {
                    assert_eq!((cfg.data.partition, cfg.data.alpha), (PartitionKind::Dirichlet, 0.1), "{stem}");
                }
                assert_eq!(cfg.seeds, vec![1, 2, 3], "{stem}: the paper's three trials");
                paper += 1;
            }
            n += 1;
        }
    }
    assert_eq!(paper, 12, "six paper columns, non-iid and iid");
    assert!(n >= 13, "default + twelve paper configs, found {n}");
}

#[test]
fn the_default_is_fedolf_cnn_fashion_mnist_noniid_two_clusters() {
    let cfg = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &[]).unwrap();
    assert_eq!(cfg.method, "fedolf");
    // Every table a config holds is one of `Config`'s own sections or a method's.
    let own: Vec<String> = toml::from_str::<toml::Table>(&cfg.to_toml()).unwrap().into_iter().filter(|(_, v)| v.is_table()).map(|(k, _)| k).collect();
    for section in &own {
        let reparsed = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &[format!("{section}.nosuch=1")]).unwrap_err().to_string();
        assert!(reparsed.contains("nosuch"), "[{section}]: {reparsed}");
    }
    assert_eq!((cfg.model.name.as_str(), cfg.data.dataset.as_str()), ("cnn", "fashion-mnist"));
    assert_eq!((cfg.data.partition, cfg.data.alpha, cfg.federation.clusters), (PartitionKind::Dirichlet, 0.1, 2));
    assert!(cfg.seeds.is_empty(), "the default experiment is one seed");
    assert_eq!(cfg.trial_seeds(), vec![cfg.seed]);
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["seeds=[1, 2, 1]".into()]).unwrap_err();
    assert!(e.to_string().contains("seeds"), "{e}");
}

#[test]
fn overrides_apply_and_bad_ones_are_named() {
    let cfg = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["train.lr=0.5".into(), "method=fedavg".into()]).unwrap();
    assert_eq!((cfg.train.lr, cfg.method.as_str()), (0.5, "fedavg"));
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["nonsense".into()]).unwrap_err();
    assert!(e.to_string().contains("key=value"), "{e}");
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["seed.x=1".into()]).unwrap_err();
    assert!(e.to_string().contains("`seed` is not a table"), "{e}");
    let e = Config::from_toml("name = ", "broken.toml", &[]).unwrap_err();
    assert!(e.to_string().starts_with("broken.toml"), "{e}");
}

#[test]
fn method_options_parse_and_bad_ones_name_their_field() {
    use fedolf::strategy::StageLengths;
    #[derive(serde::Deserialize, Default, Debug, PartialEq)]
    #[serde(default)]
    struct Slt {
        stage_lengths: Option<StageLengths>,
    }
    let cfg = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &[]).unwrap();
    assert_eq!(cfg.options_of::<Slt>("slt").unwrap().stage_lengths, Some(StageLengths::Params), "experiments/default.toml spells SLT's default out");
    let cfg = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["slt.stage_lengths=\"equal\"".into(), "cocofl.fake_int8=true".into(), "method=slt".into()]).unwrap();
    assert_eq!((cfg.options_of::<Slt>("slt").unwrap().stage_lengths, cfg.method.as_str()), (Some(StageLengths::Equal), "slt"));
    // A method's section survives the run folder's config.toml.
    assert_eq!(Config::from_toml(&cfg.to_toml(), "config.toml", &[]).unwrap(), cfg);
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["scalefl.gamma=-1".into()]).unwrap_err();
    assert!(e.to_string().contains("scalefl.gamma") && e.to_string().contains("--set scalefl.gamma=-1"), "{e}");
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["fedavg.x=1".into()]).unwrap_err();
    assert!(e.to_string().contains("fedavg.x"), "{e}");
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["method=sparta".into()]).unwrap_err();
    assert!(e.to_string().contains("`method`") && e.to_string().contains("unknown method"), "{e}");
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["slt.stage_lengths=\"longest\"".into()]).unwrap_err();
    assert!(e.to_string().contains("slt.stage_lengths"), "{e}");
    let e = Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &["cocofl.int4=true".into()]).unwrap_err();
    assert!(e.to_string().contains("cocofl") && e.to_string().contains("int4"), "{e}");
}

#[test]
fn memory_budget_settings_are_checked_and_bad_ones_name_their_field() {
    let parse = |sets: &[&str]| Config::from_toml(fedolf::config::DEFAULT_TOML, "default", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let cfg = parse(&["federation.capacity=\"memory\"", "federation.budgets_mb=[64, 128, 256, 512]", "federation.budget_jitter=0.2"]).unwrap();
    assert_eq!(cfg.federation.capacity, fedolf::config::Capacity::Memory);
    assert_eq!(cfg.federation.capacity_groups(), 4);
    assert_eq!(parse(&[]).unwrap().federation.capacity, fedolf::config::Capacity::Clusters, "clusters stay the default");
    for (sets, field) in [
        (&["federation.capacity=\"memory\""][..], "federation.budgets_mb"),
        (&["federation.capacity=\"memory\"", "federation.budgets_mb=[64, -1]"][..], "federation.budgets_mb"),
        (&["federation.capacity=\"memory\"", "federation.budgets_mb=[64]", "federation.budget_jitter=1.5"][..], "federation.budget_jitter"),
        (&["federation.budgets_mb=[64]"][..], "federation.budgets_mb"),
        (&["federation.capacity=\"disk\""][..], "federation.capacity"),
    ] {
        let e = parse(sets).unwrap_err().to_string();
        assert!(e.contains(field), "{sets:?}: {e}");
    }
}
