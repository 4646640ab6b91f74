//! The queue of requests waiting for an upstream slot: one FIFO per client, served round-robin
//! across clients.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use super::Ticket;
use crate::config::ClientId;

#[derive(Default)]
pub struct FairQueue {
    /// Each client's waiting requests, oldest first.
    waiting: HashMap<ClientId, VecDeque<oneshot::Sender<Ticket>>>,
    /// Clients with waiting requests, in the order they are served next.
    turn: VecDeque<ClientId>,
}

impl FairQueue {
    pub fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }

    pub fn push(&mut self, client: ClientId, waiter: oneshot::Sender<Ticket>) {
        let queue = self.waiting.entry(client.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(client);
        }
        queue.push_back(waiter);
    }

    /// How many grants would go before a new request of this client: its own earlier requests,
    /// and from every other client as many as it has waiting, up to one per round that the new
    /// request has to wait for.
    pub fn ahead_of(&self, client: &ClientId) -> u32 {
        let own = self.waiting.get(client).map_or(0, VecDeque::len);
        let others: usize = self
            .waiting
            .iter()
            .filter(|(id, _)| *id != client)
            .map(|(_, queue)| queue.len().min(own + 1))
            .sum();
        u32::try_from(own + others).unwrap_or(u32::MAX)
    }

    /// Drops waiters that gave up; says whether anyone still waits.
    pub fn has_live_waiter(&mut self) -> bool {
        self.turn.retain(|client| {
            let Some(queue) = self.waiting.get_mut(client) else {
                return false;
            };
            queue.retain(|waiter| !waiter.is_closed());
            if queue.is_empty() {
                self.waiting.remove(client);
                false
            } else {
                true
            }
        });
        !self.turn.is_empty()
    }

    /// Gives the ticket to the next waiter in turn; returns it if nobody could take it.
    pub fn grant(&mut self, mut ticket: Ticket) -> Option<Ticket> {
        while let Some(client) = self.turn.pop_front() {
            let Some(queue) = self.waiting.get_mut(&client) else {
                continue;
            };
            while let Some(waiter) = queue.pop_front() {
                match waiter.send(ticket) {
                    Ok(()) => {
                        if queue.is_empty() {
                            self.waiting.remove(&client);
                        } else {
                            self.turn.push_back(client);
                        }
                        return None;
                    }
                    // It gave up between the check and the grant: try the next one.
                    Err(returned) => ticket = returned,
                }
            }
            self.waiting.remove(&client);
        }
        Some(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(name: &str) -> ClientId {
        ClientId(Arc::from(name))
    }

    #[test]
    fn slots_go_round_robin_across_clients() {
        let mut queue = FairQueue::default();
        let mut receivers = Vec::new();
        for name in ["a", "a", "a", "b", "c", "a", "b"] {
            let (tx, rx) = oneshot::channel();
            queue.push(id(name), tx);
            receivers.push((name, rx));
        }
        let mut served = Vec::new();
        for minute in 0..7 {
            assert_eq!(queue.grant(Ticket { minute }), None);
            for (name, rx) in receivers.iter_mut() {
                if let Ok(ticket) = rx.try_recv() {
                    served.push((ticket.minute, *name));
                }
            }
        }
        served.sort();
        let order: Vec<&str> = served.into_iter().map(|(_, n)| n).collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "a", "a"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn waiters_that_gave_up_are_skipped() {
        let mut queue = FairQueue::default();
        let (gone, rx_gone) = oneshot::channel();
        let (kept, mut rx_kept) = oneshot::channel();
        queue.push(id("a"), gone);
        queue.push(id("a"), kept);
        drop(rx_gone);
        assert!(queue.has_live_waiter());
        assert_eq!(queue.grant(Ticket { minute: 1 }), None);
        assert_eq!(rx_kept.try_recv().unwrap(), Ticket { minute: 1 });
        assert!(!queue.has_live_waiter());
        assert_eq!(
            queue.grant(Ticket { minute: 2 }),
            Some(Ticket { minute: 2 })
        );
    }

    #[test]
    fn a_new_client_is_not_queued_behind_a_busy_one() {
        let mut queue = FairQueue::default();
        for _ in 0..50 {
            queue.push(id("busy"), oneshot::channel().0);
        }
        assert_eq!(queue.ahead_of(&id("quiet")), 1);
        assert_eq!(queue.ahead_of(&id("busy")), 50);
    }
}
