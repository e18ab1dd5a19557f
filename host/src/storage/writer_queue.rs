//! The queue to a store's writer, as the store holds it: jobs go in until
//! `close`, after which the writer finishes what is queued and stops. The
//! sqlite store (one writer thread) and the SQL stores (writer tasks)
//! both send through it.
//!
//! A job is sent under the queue's lock (an unbounded send does not wait)
//! rather than through a clone of the sender, whose count every caller's
//! thread would otherwise bump and drop.

use crate::model::{Error, Result};
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

pub struct WriterQueue<T> {
    sender: Mutex<Option<mpsc::UnboundedSender<T>>>,
    /// The store's name, for errors.
    name: &'static str,
}

impl<T> WriterQueue<T> {
    pub fn new(sender: mpsc::UnboundedSender<T>, name: &'static str) -> Self {
        WriterQueue { sender: Mutex::new(Some(sender)), name }
    }

    /// Queues `job`: `UNAVAILABLE` once the store is closed or its writer
    /// has stopped.
    pub fn send(&self, job: T) -> Result<()> {
        match &*self.sender.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(sender) => sender.send(job).map_err(|_| self.stopped()),
            None => Err(Error::unavailable(format!("{}: storage is closed", self.name))),
        }
    }

    /// Queues `job` and waits for the outcome the writer sends to `done`.
    pub async fn call<R>(&self, job: T, done: oneshot::Receiver<Result<R>>) -> Result<R> {
        self.send(job)?;
        done.await.map_err(|_| self.stopped())?
    }

    /// Takes no more jobs; those queued are still done.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn stopped(&self) -> Error {
        Error::unavailable(format!("{}: writer stopped", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_is_answered_until_the_queue_closes_or_its_writer_stops() {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, oneshot::Sender<Result<u32>>)>();
        let queue = WriterQueue::new(tx, "test");
        let writer = tokio::spawn(async move {
            let (n, reply) = rx.recv().await.expect("a job");
            let _ = reply.send(Ok(n * 2));
            // The next job's reply is dropped unanswered, then the writer stops.
            drop(rx.recv().await);
        });
        let (reply, done) = oneshot::channel();
        assert_eq!(queue.call((21, reply), done).await.unwrap(), 42);
        let (reply, done) = oneshot::channel();
        let stopped = queue.call((1, reply), done).await.unwrap_err();
        assert_eq!(stopped.to_string(), Error::unavailable("test: writer stopped").to_string());
        writer.await.unwrap();
        let (reply, _) = oneshot::channel();
        let gone = queue.send((1, reply)).unwrap_err();
        assert_eq!(gone.to_string(), Error::unavailable("test: writer stopped").to_string());
        queue.close();
        let (reply, _) = oneshot::channel();
        let closed = queue.send((1, reply)).unwrap_err();
        assert_eq!(closed.to_string(), Error::unavailable("test: storage is closed").to_string());
    }
}
