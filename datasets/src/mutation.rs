//! A seeded byte-mutation engine for fuzzing the readers on stable Rust (no nightly
//! toolchain, no coverage instrumentation): start from valid files and truncate, flip,
//! extend, splice, overwrite 32-bit fields with boundary values. Used by the fuzz tests of
//! this crate and of the config parser; nothing at run time calls it.

/// xorshift64* — small, fast, reproducible; not for anything but test inputs.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

/// 32-bit values that break size arithmetic (header fields such as image counts).
const INTERESTING: [u32; 9] = [0, 1, 2, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self { state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One to four mutations of `seed`; `corpus` supplies splice material.
    pub fn mutate(&mut self, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(8) {
                0 => {
                    let keep = self.below(v.len() + 1);
                    v.truncate(keep);
                }
                1 if !v.is_empty() => {
                    for _ in 0..1 + self.below(8) {
                        let i = self.below(v.len());
                        v[i] ^= 1 << self.below(8);
                    }
                }
                2 => {
                    let extra = self.below(64);
                    for _ in 0..extra {
                        v.push(self.next_u64() as u8);
                    }
                }
                3 if !corpus.is_empty() => {
                    let other = &corpus[self.below(corpus.len())];
                    if !other.is_empty() {
                        let from = self.below(other.len());
                        let len = self.below(other.len() - from + 1);
                        let at = self.below(v.len() + 1);
                        let end = (at + self.below(len + 1)).min(v.len());
                        v.splice(at..end, other[from..from + len].iter().copied());
                    }
                }
                4 if v.len() >= 4 => {
                    // Header fields sit early: favour the first 64 bytes.
                    // Fields are 4-byte aligned in the formats here; hit the alignment often.
                    let span = v.len().min(64) - 3;
                    let mut at = self.below(span);
                    if self.below(2) == 0 {
                        at -= at % 4;
                    }
                    v[at..at + 4].copy_from_slice(&INTERESTING[self.below(INTERESTING.len())].to_be_bytes());
                }
                5 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next_u64() as u8;
                }
                6 if !v.is_empty() => {
                    let from = self.below(v.len());
                    let len = self.below((v.len() - from).min(256) + 1);
                    let chunk: Vec<u8> = v[from..from + len].to_vec();
                    let at = self.below(v.len() + 1);
                    v.splice(at..at, chunk);
                }
                _ if !v.is_empty() => {
                    let from = self.below(v.len());
                    let len = self.below(v.len() - from + 1);
                    v.drain(from..from + len);
                }
                _ => v.push(self.next_u64() as u8),
            }
        }
        v
    }
}
