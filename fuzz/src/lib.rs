//! A mutation fuzzer for the parsers that runs on the stable toolchain: seeds from the
//! conformance inputs and corpus (HL7 v2, SS-MIX2, MML), mutations that matter to ER7
//! and XML (delimiters, escapes, entities, tags, truncation, duplication, huge repeats,
//! invalid bytes), every input run through the full decode → parse → map pipeline of
//! each parser under `catch_unwind`. A panic is a failure and its input is saved.
//! `cargo run --release -p kakehashi-fuzz --bin fuzz-hl7 -- SECONDS`.

use kakehashi_adapters::text::Charset;
use kakehashi_adapters::ParseOptions;
use kakehashi_mappings::Context;
use std::path::{Path, PathBuf};

/// xorshift64*: deterministic, seedable, good enough for mutation choices.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\r\n",
    b"MSH|^~\\&|",
    b"\\X",
    b"\\XZZ\\",
    b"\\F\\",
    b"\\.br\\",
    b"\x1b$B",
    b"\x1b(B",
    b"\x1b$(D",
    b"\xff",
    b"\xe3\x81",
    b"\x00",
    b"\x0b",
    b"\x1c",
    b"-",
    b"99999999999999999999",
    b"NaN",
    b"<",
    b"PRB|AD|",
    b"RXE||",
    b"OBX|1|NM|",
    b"ORC|NW|",
    b"TQ1|1||",
    b"IN1|1|",
    b"PID|1||",
    b"AL1|1|",
];

/// Mutate `input` in place with 1-4 random edits.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, piece.iter().copied());
            }
            2 if len > 0 => input.truncate(rng.below(len)),
            3 if len > 1 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            4 if len > 1 => {
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                input.drain(a..b);
            }
            5 => {
                // Long runs: segments of megabytes.
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                let times = 1 + rng.below(1 << 16);
                let at = rng.below(len + 1);
                let run: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * times).collect();
                input.splice(at..at, run);
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next_u64() as u8);
            }
        }
    }
}

/// Run one input through the pipeline; Err(message) if it panicked.
pub fn run_one(input: &[u8]) -> Result<(), String> {
    let ctx = Context {
        owner: "4610100011".into(),
        owner_name: "fuzz".into(),
        site: "fuzz".into(),
        source_key: "fuzz".into(),
    };
    for cs in [None, Some(Charset::Iso2022Jp), Some(Charset::ShiftJis)] {
        let opts = ParseOptions { default_charset: cs, force_charset: None };
        let r = std::panic::catch_unwind(|| {
            if let Ok(t) = kakehashi_mappings::hl7v2::translate_bytes(input, &opts, &ctx) {
                let _ = t.resources.len();
            }
            if let Ok(t) = kakehashi_mappings::mml::translate_bytes(input, &opts, &ctx) {
                let _ = t.resources.len();
            }
            if let Ok(t) = kakehashi_mappings::jahis_rx::translate_bytes(input, &opts, &ctx) {
                let _ = t.resources.len();
            }
            if let Ok(t) = kakehashi_mappings::cda::translate_bytes(input, &opts, &ctx) {
                let _ = t.resources.len();
            }
        });
        if let Err(p) = r {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            return Err(msg.unwrap_or_else(|| "panic".into()));
        }
    }
    Ok(())
}

/// Seed inputs: every `input.*` under `conformance/` (and the SS-MIX2 corpus when present).
pub fn seeds(repo: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![
        repo.join("conformance"),
        repo.join("../shared/corpus/ss-mix2"),
        repo.join("../shared/corpus/hl7v2-generic"),
        repo.join("../shared/corpus/mml/sample"),
        repo.join("../shared/corpus/cda"),
    ];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("input.")
                    || n.ends_with(".hl7")
                    || n.ends_with(".xml")
                    || n.ends_with("_1")
                    || n.ends_with("_0")
            }) {
                if let Ok(b) = std::fs::read(&p) {
                    if b.len() < (1 << 20) {
                        out.push(b);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Fuzz for `iterations`; returns the number run or the first crashing input.
pub fn fuzz(seeds: &[Vec<u8>], seed: u64, iterations: u64) -> Result<u64, (Vec<u8>, String)> {
    let mut rng = Rng::new(seed);
    for i in 0..iterations {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input);
        if let Err(msg) = run_one(&input) {
            return Err((input, msg));
        }
        let _ = i;
    }
    Ok(iterations)
}
