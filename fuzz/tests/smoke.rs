//! A short deterministic fuzz run in the test suite; long runs use the `fuzz-hl7` binary.

#[test]
fn five_thousand_mutated_inputs_do_not_panic() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seeds = kakehashi_fuzz::seeds(&repo);
    assert!(seeds.len() >= 20, "seeds found: {}", seeds.len());
    match kakehashi_fuzz::fuzz(&seeds, 42, 5_000) {
        Ok(n) => assert_eq!(n, 5_000),
        Err((input, msg)) => panic!("panic `{msg}` on input {:?}", String::from_utf8_lossy(&input)),
    }
}

#[test]
fn mutations_change_inputs() {
    let mut rng = kakehashi_fuzz::Rng::new(7);
    let base = b"MSH|^~\\&|A|B\rPID|1||123".to_vec();
    let changed = (0..100).filter(|_| {
        let mut x = base.clone();
        kakehashi_fuzz::mutate(&mut rng, &mut x);
        x != base
    });
    assert!(changed.count() > 90);
}
