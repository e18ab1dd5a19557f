//! A small pool of read connections.
//!
//! sqlx's own pool pings every connection when it is returned (a second
//! round trip per query); this one does not. Instead a connection goes back
//! to the pool only after its call succeeded or the database refused the
//! statement; one whose call failed at the connection level, or was
//! cancelled mid-call (a timeout), is dropped. A connection error also
//! drops every idle connection (they lead to the same server, which most
//! likely went away), and a call that failed that way on a reused
//! connection is retried once on a new one: reads are safe to repeat, and
//! after a database restart no caller sees an error caused only by a
//! connection left over from before it.

use super::is_connection_error;
use futures::future::BoxFuture;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;

pub type Connector<C> = Box<dyn Fn() -> BoxFuture<'static, Result<C, sqlx::Error>> + Send + Sync>;

pub struct Pool<C> {
    idle: Mutex<Vec<C>>,
    /// One permit per connection that may be open at once.
    permits: Semaphore,
    connect: Connector<C>,
    connect_timeout: Duration,
}

impl<C: Send + 'static> Pool<C> {
    pub fn new(size: usize, connect_timeout: Duration, connect: Connector<C>) -> Self {
        Pool {
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            connect,
            connect_timeout,
        }
    }

    /// Opens a new connection, bounded by the connect timeout.
    pub async fn open(&self) -> Result<C, sqlx::Error> {
        match tokio::time::timeout(self.connect_timeout, (self.connect)()).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))),
        }
    }

    fn take_idle(&self) -> Option<C> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, conn: C) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A connection for one call; see [`Lease::settle`].
    pub async fn lease(&self) -> Result<Lease<'_, C>, sqlx::Error> {
        let permit = self.permits.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let (conn, reused) = match self.take_idle() {
            Some(c) => (c, true),
            None => (self.open().await?, false),
        };
        Ok(Lease { pool: self, conn: Some(conn), reused, _permit: permit })
    }
}

/// A connection taken from the pool. Dropped without [`Lease::settle`]
/// (a cancelled call), its connection is closed rather than reused.
pub struct Lease<'p, C> {
    pool: &'p Pool<C>,
    conn: Option<C>,
    reused: bool,
    _permit: tokio::sync::SemaphorePermit<'p>,
}

impl<C: Send + 'static> Lease<'_, C> {
    pub fn conn(&mut self) -> &mut C {
        self.conn.as_mut().expect("a lease holds a connection until settled")
    }

    /// Ends a call made on [`Lease::conn`]: a connection that worked (or
    /// whose statement the database refused) goes back to the pool. After a
    /// connection error on a reused connection, this opens a new one and
    /// returns true: make the call again (once).
    pub async fn settle<T>(&mut self, result: &Result<T, sqlx::Error>) -> Result<bool, sqlx::Error> {
        match result {
            Err(e) if is_connection_error(e) => {
                self.conn = None;
                self.pool.forget_idle();
                if !self.reused {
                    return Ok(false);
                }
                self.conn = Some(self.pool.open().await?);
                self.reused = false;
                Ok(true)
            }
            _ => {
                if let Some(conn) = self.conn.take() {
                    self.pool.give_back(conn);
                }
                Ok(false)
            }
        }
    }
}
