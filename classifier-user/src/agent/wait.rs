//! What the agent sleeps on between drains: the ring buffer's forced wakeups,
//! SIGINT/SIGTERM, and a timeout.
//!
//! One `epoll_wait` per wakeup and nothing else. The async runtime this replaces
//! cost about three syscalls and a context switch more per timed wakeup (its
//! timer woke its own driver through an eventfd), which at 20 wakeups a second
//! was a measurable share of the agent's CPU when traffic is light.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// SIGINT or SIGTERM.
    Signal,
    /// A forced ring wakeup (the ring passed its threshold) or the timeout: drain.
    Drain,
}

pub struct Waiter {
    epoll: OwnedFd,
    signals: OwnedFd,
}

const RING: u64 = 1;
const SIGNALS: u64 = 2;

impl Waiter {
    /// Watches `ring_fd` (edge-triggered: a ring with data left in it must not
    /// wake the agent again, only a new forced wakeup does) and takes SIGINT and
    /// SIGTERM as readable events instead of handlers. Call it while the agent is
    /// single-threaded: the signals are blocked for the calling thread only.
    pub fn new(ring_fd: RawFd) -> Result<Self> {
        let signals = signal_fd(&[libc::SIGINT, libc::SIGTERM]).context("signalfd")?;
        // SAFETY: plain syscall; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: `epoll` is a new descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        add(&epoll, ring_fd, libc::EPOLLIN | libc::EPOLLET, RING)
            .context("registering the ring buffer with epoll")?;
        add(&epoll, signals.as_raw_fd(), libc::EPOLLIN, SIGNALS).context("epoll_ctl")?;
        Ok(Self { epoll, signals })
    }

    /// Sleeps until a signal, a forced ring wakeup, or `timeout`.
    pub fn wait(&self, timeout: Duration) -> Result<Wake> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // Round up: a timeout cut to 0 ms would spin until the deadline.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a valid array of 2 entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Wake::Drain);
            }
            return Err(e).context("epoll_wait");
        }
        if events[..n as usize].iter().any(|e| e.u64 == SIGNALS) {
            self.take_signal();
            return Ok(Wake::Signal);
        }
        Ok(Wake::Drain)
    }

    fn take_signal(&self) {
        // SAFETY: an all-zero signalfd_siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reads into `info`, which is exactly the size passed.
        unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
    }
}

fn add(epoll: &OwnedFd, fd: RawFd, events: i32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks `signals` for this thread and returns a descriptor that reads them.
fn signal_fd(signals: &[i32]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned here; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
    }
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: -1 asks for a new descriptor; `set` is initialized.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
