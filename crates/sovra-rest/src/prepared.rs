//! Main statements prepared once per pooled connection and role.
//!
//! A request's statement is prepared inside its transaction, after the role
//! switch and the request settings, so that PostgreSQL resolves its names
//! with the caller's schema privileges and `search_path`, exactly as when it
//! parses the statement afresh. Later requests of the same role on the same
//! connection only bind and execute it. PostgreSQL still decides at every
//! execution: it checks table and column privileges and function `EXECUTE`
//! rights as the current role, re-plans a statement whose plan depends on
//! row-level security when the role or `row_security` differ, re-analyses it
//! when `search_path` differs, and invalidates it on DDL, policy, privilege
//! and schema changes. Keying by role as well as SQL text means a statement
//! is only ever executed by the role whose name lookup prepared it (schema
//! `USAGE` is checked at name lookup only).
//!
//! Each connection keeps at most [`PER_CONNECTION`] statements (least
//! recently used evicted; the driver closes a statement when its last handle
//! is dropped), which bounds the memory of the PostgreSQL backends as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use sovra_pg::ClientWrapper;
use sovra_pg::tokio_postgres::Statement;

/// Statements kept per connection.
pub const PER_CONNECTION: usize = 64;

/// Per-connection caches of prepared main statements, keyed by role and
/// SQL text.
#[derive(Debug, Default)]
pub struct Statements {
    connections: Mutex<HashMap<usize, Connection>>,
}

/// One pooled connection's statements. The connection is identified by the
/// address of its driver-side statement cache; the [`Weak`] keeps that
/// allocation (not the connection) alive, so the address cannot be reused by
/// another connection while this entry exists, and tells when the
/// connection is gone.
#[derive(Debug)]
struct Connection {
    alive: Weak<sovra_pg::StatementCache>,
    clock: u64,
    len: usize,
    by_role: HashMap<String, HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    statement: Statement,
    used: u64,
}

fn key(client: &ClientWrapper) -> usize {
    Arc::as_ptr(&client.statement_cache) as usize
}

impl Statements {
    /// The statement `sql` prepared for `role` on `client`, if any.
    pub fn get(&self, client: &ClientWrapper, role: &str, sql: &str) -> Option<Statement> {
        let mut connections = self.connections.lock().ok()?;
        let connection = connections.get_mut(&key(client))?;
        connection.clock += 1;
        let clock = connection.clock;
        let entry = connection.by_role.get_mut(role)?.get_mut(sql)?;
        entry.used = clock;
        Some(entry.statement.clone())
    }

    /// Remembers `statement`, prepared from `sql` as `role` on `client`.
    pub fn insert(&self, client: &ClientWrapper, role: &str, sql: &str, statement: Statement) {
        let Ok(mut connections) = self.connections.lock() else {
            return;
        };
        let id = key(client);
        if !connections.contains_key(&id) {
            // A new connection: forget the ones the pool has dropped.
            connections.retain(|_, c| c.alive.strong_count() > 0);
            connections.insert(
                id,
                Connection {
                    alive: Arc::downgrade(&client.statement_cache),
                    clock: 0,
                    len: 0,
                    by_role: HashMap::new(),
                },
            );
        }
        let Some(connection) = connections.get_mut(&id) else {
            return;
        };
        connection.clock += 1;
        let used = connection.clock;
        let previous = connection
            .by_role
            .entry(role.to_owned())
            .or_default()
            .insert(sql.to_owned(), Entry { statement, used });
        if previous.is_none() {
            connection.len += 1;
        }
        while connection.len > PER_CONNECTION {
            connection.evict_oldest();
        }
    }

    /// Forgets `sql` for `role` on `client` (after an error that may come
    /// from the prepared statement itself).
    pub fn remove(&self, client: &ClientWrapper, role: &str, sql: &str) {
        let Ok(mut connections) = self.connections.lock() else {
            return;
        };
        if let Some(connection) = connections.get_mut(&key(client))
            && let Some(statements) = connection.by_role.get_mut(role)
            && statements.remove(sql).is_some()
        {
            connection.len -= 1;
        }
    }

    /// How many statements `client` holds (for tests).
    pub fn held(&self, client: &ClientWrapper) -> usize {
        self.connections
            .lock()
            .ok()
            .and_then(|c| c.get(&key(client)).map(|c| c.len))
            .unwrap_or(0)
    }
}

impl Connection {
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_role
            .iter()
            .flat_map(|(role, statements)| {
                statements
                    .iter()
                    .map(move |(sql, entry)| (entry.used, role, sql))
            })
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, role, sql)| (role.clone(), sql.clone()));
        let Some((role, sql)) = oldest else {
            self.len = 0;
            return;
        };
        if let Some(statements) = self.by_role.get_mut(&role) {
            statements.remove(&sql);
            if statements.is_empty() {
                self.by_role.remove(&role);
            }
        }
        self.len -= 1;
    }
}
