//! What a response head says beyond its first line, found inside the kernel:
//! one bit, never the bytes (see `LINE_CAP`). Shared by the probes and the
//! agent's tests, which run it on real heads.
use crate::LINE_CAP;

/// Where the second look at a head starts ([`TAIL_WORDS`] words from here):
/// 8 bytes before the capture's end, so that every line start the first look
/// cannot compare in full (after byte 144) falls in the second.
pub const TAIL_FROM: u64 = LINE_CAP as u64 - 24;

/// Words of the second look: lines starting up to byte 184 of the head.
pub const TAIL_WORDS: usize = 8;

/// Whether the first `valid` bytes of a response head, `words`, hold nginx's
/// `Connection: keep-alive` line: the proxy promised its client to keep the
/// connection, so a close right after the response is no planned end but a
/// response it gave up on (nginx cutting a client off after the upstream's
/// reply broke mid-body). nginx writes this line after its own `Server`,
/// `Date`, `Content-Type` and `Content-Length` (or `Transfer-Encoding`):
/// within the first 145 bytes for most heads, and within 185 for nearly all
/// (a `Content-Type` with a charset and a chunked body push it past 145).
/// The probes look in the capture itself (`WORDS` = LINE_CAP / 8, `FIRST` =
/// 1: the status line takes the first word at least), then, when the head
/// goes on, in [`TAIL_WORDS`] words read from [`TAIL_FROM`] (`FIRST` = 0).
/// Only this bit leaves the kernel: the captured bytes after the first line
/// are zeroed next, and the second look's stay in a per-CPU scratch buffer.
///
/// Each word's first line break is the only one that matters: nginx's lines
/// before this one are 15 bytes or more. The 13 bytes after it are compared
/// as two words read across the aligned ones. Written for the verifier: no
/// branch on a bit of the word, and `valid` compared only on a match (a
/// comparison in the loop would split its range at every word, and the
/// states multiply). Bytes past `valid` are what the buffer held before,
/// which cannot hold a line break followed by this text (a message's line is
/// zeroed past its first `\n`; the scratch buffer holds only heads), and a
/// match still needs `valid` to cover it.
///
/// # Safety
/// `words` points to `WORDS` words, 8-aligned; `WORDS >= 3`.
#[inline(always)]
pub unsafe fn promises_keep_alive<const WORDS: usize, const FIRST: u64>(
    words: *const u64,
    valid: u64,
) -> bool {
    const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Multiplying `1 << 8b` by this puts `b` in the top byte.
    const BYTE_INDEX: u64 = 0x0001_0203_0405_0607;
    const CONNECTI: u64 = u64::from_le_bytes(*b"Connecti");
    const CTION_K: u64 = u64::from_le_bytes(*b"ction: k");
    // Line breaks are looked for in all words but the last two: a line
    // starting after the last of them still has its 13 bytes within both
    // reads. The bounds are the loop's and the byte index's mask, known to
    // the verifier.
    let mut i: u64 = FIRST;
    while i < WORDS as u64 - 2 {
        // SAFETY: i < WORDS.
        let x = unsafe { *words.add(i as usize) } ^ LF;
        let t = x.wrapping_sub(LOW) & !x & HIGH;
        // The lowest flagged byte is exact (borrows only flag higher bytes).
        let b = (((t & t.wrapping_neg()) >> 7).wrapping_mul(BYTE_INDEX) >> 56) & 7;
        // The line starts at byte i * 8 + b + 1.
        if t != 0
            // SAFETY: i + 2 < WORDS and b + 6 < 16.
            && unsafe { word_at(words, i, b + 1) } == CONNECTI
            // SAFETY: as above.
            && unsafe { word_at(words, i, b + 6) } == CTION_K
        {
            return i * 8 + b + 14 <= valid;
        }
        i += 1;
    }
    false
}

/// The 8 bytes at byte `k` of word `base` in `words`, from the two aligned
/// words around them, with no branch on the alignment (the second word's share
/// is shifted twice, so that all of it goes when they are aligned). The word
/// index is `base` plus `k`'s own bit, so the verifier knows it exactly; a
/// byte offset masked down to a word it bounds only loosely.
///
/// # Safety
/// `base + 2` is within `words` and `k < 16`; `words` is 8-aligned.
#[inline(always)]
unsafe fn word_at(words: *const u64, base: u64, k: u64) -> u64 {
    let i = (base + (k >> 3)) as usize;
    let shift = (k & 7) * 8;
    // SAFETY: i + 1 <= base + 2, within `words` by the caller's contract.
    let (low, high) = unsafe { (*words.add(i), *words.add(i + 1)) };
    (low >> shift) | ((high << 1) << (63 - shift))
}

/// Both looks of the probes at a head (the agent's tests): `head` as they
/// read it, its first `valid` bytes valid.
pub fn head_promises_keep_alive(head: &[u8], valid: usize) -> bool {
    let words = |from: usize, into: &mut [u64]| {
        for (i, w) in into.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            for (j, byte) in b.iter_mut().enumerate() {
                *byte = head.get(from + i * 8 + j).copied().unwrap_or(0);
            }
            *w = u64::from_le_bytes(b);
        }
    };
    let mut first = [0u64; LINE_CAP / 8];
    words(0, &mut first);
    // SAFETY: `first` is LINE_CAP / 8 words.
    if unsafe { promises_keep_alive::<{ LINE_CAP / 8 }, 1>(first.as_ptr(), valid as u64) } {
        return true;
    }
    if valid <= LINE_CAP {
        return false;
    }
    let mut tail = [0u64; TAIL_WORDS];
    words(TAIL_FROM as usize, &mut tail);
    let tail_valid = (valid - TAIL_FROM as usize).min(TAIL_WORDS * 8) as u64;
    // SAFETY: `tail` is TAIL_WORDS words.
    unsafe { promises_keep_alive::<TAIL_WORDS, 0>(tail.as_ptr(), tail_valid) }
}
