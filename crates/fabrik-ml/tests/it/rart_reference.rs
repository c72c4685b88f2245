//! RART against the Python reference implementation (research/nab/detector2.py) on three NAB
//! files: every row's score must be bit-identical. Also `run_nab` end to end on the fixture
//! tree (results layout, label column, exact round trip of the scores).

use fabrik_ml::StreamingDetectorKind;
use fabrik_ml::nab::{NabCorpus, detect_file, read_results, results_path, run_nab};

use crate::support::{ScratchDir, fixture, json};

#[test]
fn rart_scores_are_bit_identical_to_the_python_reference() {
    let corpus = NabCorpus::load(&fixture("nab")).expect("load fixture corpus");
    let reference = json("nab/rart_reference_scores.json");
    for file in &corpus.files {
        let want = &reference[file.key.as_str()];
        assert_eq!(
            want["rows"].as_u64(),
            Some(file.len() as u64),
            "{}",
            file.key
        );
        let mut expected = vec![0.0; file.len()];
        for entry in want["nonzero"].as_array().expect("nonzero rows") {
            let row = entry[0].as_u64().expect("row") as usize;
            expected[row] = entry[1].as_f64().expect("score");
        }
        let ours = detect_file(file, StreamingDetectorKind::Rart);
        for (row, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} row {row}: {a} vs {b}",
                file.key
            );
        }
        // Nothing is emitted during the probationary period.
        assert!(ours[..file.probationary_period].iter().all(|&s| s == 0.0));
    }
}

#[test]
fn run_nab_writes_nab_results_that_read_back_exactly() {
    let out = ScratchDir::new("run-nab");
    let root = fixture("nab");
    let report = run_nab(&root, &out.0, "rart").expect("run_nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    assert_eq!(report.files, 3);
    assert_eq!(
        report.rows,
        corpus.files.iter().map(|f| f.len()).sum::<usize>()
    );
    let file = corpus
        .file("realTraffic/speed_7578.csv")
        .expect("speed_7578");
    let path = results_path(&out.0, "rart", file);
    assert!(
        path.ends_with("rart/realTraffic/rart_speed_7578.csv"),
        "{}",
        path.display()
    );
    let text = std::fs::read_to_string(&path).expect("results file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score,label"));
    let labelled: Vec<bool> = lines
        .map(|line| line.rsplit(',').next() == Some("1"))
        .collect();
    assert_eq!(labelled.len(), file.len());
    for (row, &label) in labelled.iter().enumerate() {
        assert_eq!(label, file.is_labelled(row), "row {row}");
    }
    let read_back = read_results(&corpus, &out.0, "rart").expect("read back");
    for file in &corpus.files {
        assert_eq!(
            read_back[&file.key],
            detect_file(file, StreamingDetectorKind::Rart)
        );
    }
    // Scored on 9 windows with optimised thresholds: RART finds most of them.
    assert!(
        report.scores.standard.normalized > 50.0,
        "{:?}",
        report.scores.standard
    );
    assert!(
        run_nab(&root, &out.0, "numenta").is_err(),
        "unknown detector name"
    );
}
