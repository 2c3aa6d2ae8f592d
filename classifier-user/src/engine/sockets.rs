//! The connection table: every known socket from its start to its destruction,
//! plus a bounded graveyard of destroyed sockets, because the close of a failed
//! upstream socket is the touch that links the next attempt to its exchange and
//! the kernel reuses socket pointers at once.
use std::collections::{HashMap, VecDeque};

use super::exchange::ExId;
use crate::event::{Endpoint, Opened, Side, SockId};

#[derive(Clone, Debug)]
pub struct Sock {
    pub side: Side,
    pub how: Opened,
    pub owner: u32,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub last_activity: u64,
    /// Client side: open exchanges on this connection, oldest first.
    pub exchanges: VecDeque<ExId>,
    /// Upstream side: the exchange and attempt index the connection serves now.
    pub attempt: Option<(ExId, usize)>,
    /// Upstream side: number of attempts this connection has carried.
    pub uses: u32,
}

impl Sock {
    pub fn new(
        side: Side,
        how: Opened,
        owner: u32,
        local: Endpoint,
        peer: Endpoint,
        ts: u64,
    ) -> Self {
        Self {
            side,
            how,
            owner,
            local,
            peer,
            last_activity: ts,
            exchanges: VecDeque::new(),
            attempt: None,
            uses: 0,
        }
    }
}

/// Live sockets and recently destroyed ones, both bounded.
#[derive(Debug)]
pub struct Sockets {
    live: HashMap<SockId, Sock>,
    dead: HashMap<SockId, Sock>,
    dead_order: VecDeque<SockId>,
    max_live: usize,
    max_dead: usize,
}

impl Sockets {
    pub fn new(max_live: usize, max_dead: usize) -> Self {
        Self {
            live: HashMap::new(),
            dead: HashMap::new(),
            dead_order: VecDeque::new(),
            max_live,
            max_dead,
        }
    }

    /// Inserts a socket; returns the socket evicted to make room, if any.
    pub fn insert(&mut self, id: SockId, sock: Sock) -> Option<(SockId, Sock)> {
        let evicted = if self.live.len() >= self.max_live && !self.live.contains_key(&id) {
            // Evict the least recently active socket: O(n), only when full.
            let victim = self
                .live
                .iter()
                .min_by_key(|(_, s)| s.last_activity)
                .map(|(id, _)| *id);
            victim.and_then(|v| self.live.remove(&v).map(|s| (v, s)))
        } else {
            None
        };
        self.live.insert(id, sock);
        evicted
    }

    pub fn get(&self, id: SockId) -> Option<&Sock> {
        self.live.get(&id)
    }

    pub fn get_mut(&mut self, id: SockId) -> Option<&mut Sock> {
        self.live.get_mut(&id)
    }

    /// A live or recently destroyed socket.
    pub fn get_any(&self, id: SockId) -> Option<&Sock> {
        self.live.get(&id).or_else(|| self.dead.get(&id))
    }

    /// Moves a socket to the graveyard.
    pub fn bury(&mut self, id: SockId) -> Option<&Sock> {
        let sock = self.live.remove(&id)?;
        if self.dead.len() >= self.max_dead {
            if let Some(old) = self.dead_order.pop_front() {
                self.dead.remove(&old);
            }
        }
        self.dead_order.push_back(id);
        self.dead.insert(id, sock);
        self.dead.get(&id)
    }
}
