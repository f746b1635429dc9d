//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/*`) through the same functions the
//! fuzz targets call, so the targets stay honest on stable Rust without cargo-fuzz.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("decode_control", proto::fuzzing::decode_control),
    ("decode_stream_header", proto::fuzzing::decode_stream_header),
    ("decode_response_head", proto::fuzzing::decode_response_head),
    ("control_state", |data| {
        proto::fuzzing::control_state(data, Instant::now())
    }),
];

#[test]
fn replay_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let mut files = 0;
        for entry in std::fs::read_dir(corpus.join(name)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            println!("{}", path.display());
            target(&data);
            files += 1;
        }
        assert!(files > 0, "no seed corpus for {name}");
    }
}

#[test]
fn every_fuzz_target_is_replayed() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut found: Vec<String> = std::fs::read_dir(targets)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    found.sort();
    let mut replayed: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    replayed.sort();
    assert_eq!(found, replayed);
}
