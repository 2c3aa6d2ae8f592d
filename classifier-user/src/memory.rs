//! The agent's own memory: when the allocator gives freed memory back to the
//! kernel, and how much is resident.
//!
//! Start-up parses the kernel's BTF twice (the socket offsets, then aya's
//! relocations) and frees some 30 MiB of parsed types. mimalloc purges freed
//! pages only after a delay (1 s) and only when the freeing thread allocates
//! again, so that memory stayed resident into the run: 59 MiB right after start
//! against 29 MiB with it given back, and a million short connections then
//! peaked above the 64 MiB the agent promises (docs/cli/tuning.md). Start-up
//! therefore purges at once; the run keeps mimalloc's delay, which spares the
//! drain loop a `madvise` for every page its bursts free.
use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set};

/// `mi_option_purge_delay` in mimalloc 3's option enum (`mimalloc.h`), which the
/// binding crate does not name.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Start-up, from its first allocation to [`StartUp::done`].
pub struct StartUp {
    delay_ms: std::ffi::c_long,
}

impl StartUp {
    pub fn begin() -> Self {
        // SAFETY: option calls take and return plain integers; mimalloc reads
        // options atomically, from any thread, at any time.
        let delay_ms = unsafe { mi_option_get(PURGE_DELAY) };
        // SAFETY: as above.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
        Self { delay_ms }
    }

    /// Gives back what start-up freed and restores the run's purge delay.
    pub fn done(self) {
        // SAFETY: `mi_collect` only walks the allocator's own structures; `true`
        // also reclaims the pages of exited threads (the parallel verifier loads).
        unsafe { mi_collect(true) };
        // SAFETY: as in `begin`.
        unsafe { mi_option_set(PURGE_DELAY, self.delay_ms) };
    }
}

/// Gives back the pages the run has freed (bursts of held records, pools
/// trimmed): mimalloc purges a page only when the thread that freed it
/// allocates again after the purge delay, so without a collection pages freed
/// in a burst can stay resident for good.
pub fn give_back() {
    // SAFETY: `mi_collect` only walks the allocator's own structures; `false`
    // leaves abandoned pages of other threads alone (there are none in the run).
    unsafe { mi_collect(false) };
}

/// This process's resident memory (`/proc/self/statm`, in pages), in KiB.
pub fn resident_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()? / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: as in `StartUp::begin`.
        let delay = unsafe { mi_option_get(PURGE_DELAY) };
        // mimalloc 3's documented default; another option here would not be 1000.
        assert_eq!(delay, 1000);
    }
}
