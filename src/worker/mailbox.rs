//! Messages between workers: a crossbeam channel per worker plus a [`Notify`] that
//! wakes the receiving worker's inbox task (a blocking `recv` would stall its whole
//! runtime). Sending never blocks.
//!
//! Ordering is what makes the protocol race-free: everything one worker sends another
//! arrives in the order it was sent. The owner of a resource answers a remote poll
//! (`PollAnswer`) and then sends that resource's later changes (`Changed`) on the same
//! channel, so a watcher can never miss a change between "wait" and its first wake-up.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, Notify};

use super::watch::{WaitQuery, WaiterId};
use crate::http::range::RangeSpec;
use crate::http::response::Reply;
use crate::store::{Answer, ChangeEvent, WriteOp};
use crate::time::Timestamp;

pub enum Msg {
    /// To the owner: apply a write and reply.
    Write {
        path: Box<str>,
        op: WriteOp,
        reply: oneshot::Sender<Reply>,
    },
    /// To the owner: a plain read.
    Get {
        path: Box<str>,
        range: Option<RangeSpec>,
        if_modified_since: Option<Timestamp>,
        reply: oneshot::Sender<Reply>,
    },
    /// To the owner: a long poll of worker `from`'s waiter `id`, from stamp `query.t`.
    /// `stay`: keep sending changes after the answer (streams).
    Poll {
        path: Arc<str>,
        query: WaitQuery,
        from: usize,
        id: WaiterId,
        stay: bool,
    },
    /// To the owner: worker `from` no longer watches `path`.
    Unwatch { path: Arc<str>, from: usize },
    /// To a watcher's worker: the owner's answer to `Poll`.
    PollAnswer { id: WaiterId, answer: Answer },
    /// To a watcher's worker: a change of a resource it watches.
    Changed(Arc<ChangeEvent>),
    /// To a watcher's worker: the changes of one batch, delivered together.
    ChangedMany(Vec<Arc<ChangeEvent>>),
    /// Begin a graceful shutdown.
    Shutdown,
    /// To the owner: a batch's writes for its shard, in order.
    Batch {
        ops: Vec<(Box<str>, WriteOp)>,
        reply: oneshot::Sender<Vec<Reply>>,
    },
}

/// The sending side of one worker's inbox.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<Msg>,
    notify: Arc<Notify>,
}

/// The receiving side, owned by the worker.
pub struct Inbox {
    pub rx: Receiver<Msg>,
    pub notify: Arc<Notify>,
}

pub fn mailbox() -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let notify = Arc::new(Notify::new());
    (
        Mailbox {
            tx,
            notify: notify.clone(),
        },
        Inbox { rx, notify },
    )
}

impl Mailbox {
    pub fn send(&self, msg: Msg) {
        // The receiver lives as long as the process; a send can only fail at exit.
        if self.tx.send(msg).is_ok() {
            self.notify.notify_one();
        }
    }
}
