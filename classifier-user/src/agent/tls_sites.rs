//! Where in a TLS library to put the probes so that they cost little.
//!
//! A uprobe replaces one instruction with a breakpoint. The kernel then either
//! emulates the replaced instruction (x86-64: `push`, `call`, `jmp`, conditional
//! jumps) or executes it out of line with single-stepping, which on a virtual
//! machine traps to the hypervisor. Measured on the development VM: 0.6–0.7 µs
//! per hit on a `push`, `call` or `jcc`; 21–25 µs on `sub`, `test`, `ret`, a
//! 5-byte `nop` or a return probe's entry (a return probe also needs the
//! function's first instruction). OpenSSL's `SSL_read` and `SSL_write` start
//! with `sub $0x18,%rsp`, and a TLS request runs four of them, so probes at the
//! entries cost nginx's worker about 65 µs per request there.
//!
//! Both are thin wrappers (OpenSSL 1.1.1 and 3.x):
//!
//! ```text
//! mov %rsp,%rcx          ; &readbytes (or &written), on the stack top
//! movslq %edx,%rdx       ; num
//! call ssl_read_internal ; rdi = ssl, rsi = buf: the arguments, intact
//! test %eax,%eax
//! jle ...                ; eax = 1 on success; readbytes at (%rsp)
//! ```
//!
//! so the probes go on that `call` (the arguments) and, for reads, on that
//! `jle` (the result): two emulated instructions. `SSL_do_handshake` starts with
//! a `push`. A library whose code does not have this shape gets the probes at
//! the function entries and a return probe (correct, and slow on a VM).
use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Offsets from each function's start, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastSites {
    /// `SSL_read`'s call of its internal read (arguments intact).
    pub read_call: u64,
    /// `SSL_read`'s jump on that call's result.
    pub read_done: u64,
    /// `SSL_write`'s call of its internal write.
    pub write_call: u64,
}

/// The fast sites of a TLS library file, if its code has the expected shape.
pub fn fast_sites(file: &Path) -> Option<FastSites> {
    let data = std::fs::read(file).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    if elf.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let code = |name: &str| -> Option<Vec<u8>> {
        let sym = elf
            .dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok(name) && s.is_definition())?;
        let section = elf.section_by_index(sym.section_index()?).ok()?;
        let start = sym.address().checked_sub(section.address())?;
        let bytes = section.data().ok()?;
        let start = usize::try_from(start).ok()?;
        Some(bytes.get(start..)?.iter().take(SCAN).copied().collect())
    };
    let handshake = code("SSL_do_handshake")?;
    if !starts_with_push(&handshake) {
        return None;
    }
    let (read_call, read_done) = wrapper_sites(&code("SSL_read")?)?;
    let (write_call, _) = wrapper_sites(&code("SSL_write")?)?;
    Some(FastSites {
        read_call,
        read_done,
        write_call,
    })
}

/// Bytes of a function's start searched for the pattern.
const SCAN: usize = 96;

/// `mov %rsp,%rcx; movslq %edx,%rdx; call rel32; test %eax,%eax; jle` →
/// (offset of the call, offset of the jle).
fn wrapper_sites(code: &[u8]) -> Option<(u64, u64)> {
    const BEFORE: [u8; 6] = [0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2];
    let at = code.windows(BEFORE.len()).position(|w| w == BEFORE)?;
    let call = at + BEFORE.len();
    let after = call + 5;
    if code.get(call) != Some(&0xe8) || code.get(after..after + 2) != Some(&[0x85, 0xc0][..]) {
        return None;
    }
    let jle = after + 2;
    // jle rel8 (7e) or jle rel32 (0f 8e).
    let is_jle = matches!(code.get(jle..jle + 2)?, [0x7e, _] | [0x0f, 0x8e]);
    is_jle.then_some((call as u64, jle as u64))
}

/// A `push` of a register: `push %r` (50–57) or `push %r8–15` (41 50–57).
fn starts_with_push(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL 3.0's `SSL_read` as Debian 12 builds it.
    const SSL_READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
        0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, // mov %fs:0x28,%rax
        0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
        0x31, 0xc0, // xor %eax,%eax
        0x85, 0xd2, // test %edx,%edx
        0x78, 0x2f, // js
        0x48, 0x89, 0xe1, // mov %rsp,%rcx
        0x48, 0x63, 0xd2, // movslq %edx,%rdx
        0xe8, 0x3d, 0xfe, 0xff, 0xff, // call
        0x85, 0xc0, // test %eax,%eax
        0x7e, 0x03, // jle
        0x8b, 0x04, 0x24, // mov (%rsp),%eax
    ];

    #[test]
    fn finds_the_call_and_the_jump_of_the_wrapper() {
        assert_eq!(wrapper_sites(SSL_READ), Some((0x1e, 0x25)));
    }

    #[test]
    fn other_shapes_get_no_fast_sites() {
        let mut changed = SSL_READ.to_vec();
        changed[0x23] = 0x83; // not `test %eax,%eax` after the call
        assert_eq!(wrapper_sites(&changed), None);
        assert_eq!(wrapper_sites(&SSL_READ[..0x20]), None);
        assert!(starts_with_push(&[0x53, 0x48]));
        assert!(starts_with_push(&[0x41, 0x54]));
        assert!(!starts_with_push(&[0x48, 0x83, 0xec, 0x18]));
    }

    #[test]
    fn debian_libssl_has_fast_sites() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() || !cfg!(target_arch = "x86_64") {
            return;
        }
        assert!(fast_sites(lib).is_some());
    }
}
