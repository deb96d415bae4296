//! The fuzz corpus replayed on stable: every input in `fuzz/corpus/TARGET/` (the seeds, what the fuzzer
//! kept, and every crash or timeout it ever found, kept as a regression) goes through the same entry point
//! as the `cargo fuzz` target, in CI, without fuzzing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_fuzz_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in switchyard::fuzz::TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{name}.rs")).exists(), "no fuzz_targets/{name}.rs");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        let inputs = std::fs::read_dir(root.join("corpus").join(name)).map(|d| d.count()).unwrap_or(0);
        assert!(inputs > 0, "fuzz/corpus/{name} is empty");
    }
    let binaries = std::fs::read_dir(root.join("fuzz_targets")).unwrap().count();
    assert_eq!(binaries, switchyard::fuzz::TARGETS.len(), "a fuzz target is missing from switchyard::fuzz::TARGETS");
}

#[test]
fn the_fuzz_corpus_replays_without_a_finding() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in switchyard::fuzz::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else { continue };
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("fuzz target {name} fails on {}", path.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed >= switchyard::fuzz::TARGETS.len(), "only {replayed} corpus inputs");
}
