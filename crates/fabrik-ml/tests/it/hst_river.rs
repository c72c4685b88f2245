//! Half-Space Trees against river 0.26.1's documentation example (fixture
//! `river_hst_doc_example.json`): the trees a seed builds, the scores and the final masses.

use fabrik_ml::detectors::hst::{HalfSpaceTrees, HstConfig, HstTree};
use serde_json::Value;

use crate::support::json;

fn config(example: &Value) -> HstConfig {
    let p = &example["params"];
    HstConfig {
        n_trees: p["n_trees"].as_u64().expect("n_trees") as usize,
        height: p["height"].as_u64().expect("height") as usize,
        window_size: p["window_size"].as_u64().expect("window_size") as usize,
        seed: p["seed"].as_u64().expect("seed"),
    }
}

/// Flattens river's nested node (pre-order) into the array layout.
fn fill(node: &Value, index: usize, tree: &mut HstTree) {
    tree.l_mass[index] = node["l_mass"].as_u64().expect("l_mass") as u32;
    tree.r_mass[index] = node["r_mass"].as_u64().expect("r_mass") as u32;
    if let Some(children) = node["children"].as_array() {
        tree.threshold[index] = node["threshold"].as_f64().expect("threshold");
        tree.feature[index] = 0;
        fill(&children[0], 2 * index + 1, tree);
        fill(&children[1], 2 * index + 2, tree);
    }
}

fn river_trees(example: &Value, height: usize) -> Vec<HstTree> {
    example["final_trees"]
        .as_array()
        .expect("final_trees")
        .iter()
        .map(|root| {
            let nodes = (1 << (height + 1)) - 1;
            let mut tree = HstTree {
                feature: vec![0; (1 << height) - 1],
                threshold: vec![0.0; (1 << height) - 1],
                l_mass: vec![0; nodes],
                r_mass: vec![0; nodes],
            };
            fill(root, 0, &mut tree);
            tree
        })
        .collect()
}

fn values(example: &Value, key: &str) -> Vec<f64> {
    example[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

#[test]
fn seed_42_builds_rivers_trees_and_reproduces_its_scores_and_masses() {
    let example = json("river_hst_doc_example.json");
    let config = config(&example);
    let expected_trees = river_trees(&example, config.height);
    let mut trees = HalfSpaceTrees::new(config, vec![(0.0, 1.0)]);
    for x in values(&example, "warmup") {
        trees.learn_one(&[x]);
    }
    let mut scores = Vec::new();
    for x in values(&example, "stream") {
        trees.learn_one(&[x]);
        scores.push(trees.score_one(&[x]));
    }
    for (ours, want) in scores.iter().zip(values(&example, "scores")) {
        assert!((ours - want).abs() < 1e-12, "{scores:?}");
    }
    assert_eq!(trees.trees().len(), expected_trees.len());
    for (ours, want) in trees.trees().iter().zip(&expected_trees) {
        // Python's Mersenne Twister, seeded the same way, draws the same splits.
        assert_eq!(ours.threshold, want.threshold);
        assert_eq!(ours.l_mass, want.l_mass);
        assert_eq!(ours.r_mass, want.r_mass);
    }
}

#[test]
fn exported_trees_replay_to_the_same_scores() {
    let example = json("river_hst_doc_example.json");
    let config = config(&example);
    let mut blank = river_trees(&example, config.height);
    for tree in &mut blank {
        tree.l_mass.fill(0);
        tree.r_mass.fill(0);
    }
    let mut trees = HalfSpaceTrees::with_trees(config, blank).expect("well-formed trees");
    for x in values(&example, "warmup") {
        trees.learn_one(&[x]);
    }
    for (x, want) in values(&example, "stream")
        .into_iter()
        .zip(values(&example, "scores"))
    {
        trees.learn_one(&[x]);
        assert!((trees.score_one(&[x]) - want).abs() < 1e-12);
    }
    assert!(
        HalfSpaceTrees::with_trees(config, Vec::new()).is_err(),
        "tree count must match"
    );
}
