//! What a response head says beyond its first line, found inside the kernel:
//! one bit, never the bytes (see `LINE_CAP`). Shared by the probes and the
//! agent's tests, which run it on real heads.
use crate::LINE_CAP;

/// Whether the first `valid` bytes of a response head, `words`, hold nginx's
/// `Connection: keep-alive` line: the proxy promised its client to keep the
/// connection, so a close right after the response is no planned end but a
/// response it gave up on (nginx cutting a client off after the upstream's
/// reply broke mid-body). nginx writes this line after its own `Server`,
/// `Date`, `Content-Type` and `Content-Length` (or `Transfer-Encoding`), so it
/// often falls within the capture; past it, the answer is no. Only this bit
/// leaves the kernel: the bytes after the first line are zeroed next.
///
/// Each word's first line break is the only one that matters: nginx's lines
/// before this one are 15 bytes or more. The 13 bytes after it are compared
/// as two words read across the aligned ones. Written for the verifier: no
/// branch on a bit of the word, and `valid` compared only on a match (a
/// comparison in the loop would split its range at every word, and the
/// states multiply). Bytes past `valid` are what the ring held before, which
/// cannot hold a line break followed by this text (a message's line is zeroed
/// past its first `\n`, and a match still needs `valid` to cover it).
///
/// # Safety
/// `words` points to LINE_CAP bytes, 8-aligned.
#[inline(always)]
pub unsafe fn promises_keep_alive(words: *const u64, valid: u64) -> bool {
    const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Multiplying `1 << 8b` by this puts `b` in the top byte.
    const BYTE_INDEX: u64 = 0x0001_0203_0405_0607;
    const CONNECTI: u64 = u64::from_le_bytes(*b"Connecti");
    const CTION_K: u64 = u64::from_le_bytes(*b"ction: k");
    // Line breaks are looked for in words 1 to 17: the status line takes the
    // first word at least, and a line starting after the last of them (at
    // byte 144 at most) still has its 13 bytes within both reads. The bounds
    // are the loop's and the byte index's mask, known to the verifier.
    let mut i: u64 = 1;
    while i < (LINE_CAP / 8) as u64 - 2 {
        // SAFETY: i < LINE_CAP / 8.
        let x = unsafe { *words.add(i as usize) } ^ LF;
        let t = x.wrapping_sub(LOW) & !x & HIGH;
        // The lowest flagged byte is exact (borrows only flag higher bytes).
        let b = (((t & t.wrapping_neg()) >> 7).wrapping_mul(BYTE_INDEX) >> 56) & 7;
        // The line starts at byte i * 8 + b + 1.
        if t != 0
            // SAFETY: i + 2 < LINE_CAP / 8 and b + 6 < 16.
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
/// `base + 2 < LINE_CAP / 8` and `k < 16`; `words` points to LINE_CAP bytes,
/// 8-aligned.
#[inline(always)]
unsafe fn word_at(words: *const u64, base: u64, k: u64) -> u64 {
    let i = (base + (k >> 3)) as usize;
    let shift = (k & 7) * 8;
    // SAFETY: i + 1 <= base + 2 < LINE_CAP / 8 by the caller's contract.
    let (low, high) = unsafe { (*words.add(i), *words.add(i + 1)) };
    (low >> shift) | ((high << 1) << (63 - shift))
}

/// [`promises_keep_alive`] on a captured head (the agent's tests).
pub fn head_promises_keep_alive(head: &[u64; LINE_CAP / 8], valid: u64) -> bool {
    // SAFETY: `head` is LINE_CAP bytes, 8-aligned.
    unsafe { promises_keep_alive(head.as_ptr(), valid) }
}
