//! The connection pool every service draws from.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};

/// A pool of connections to one database.
pub type Pool = deadpool_postgres::Pool;
pub use deadpool_postgres::{
    ClientWrapper, GenericClient, Object as PooledClient, PoolError, StatementCache,
};

/// Builds a pool of at most `size` connections; `wait` bounds how long a
/// request waits for a free connection. Connections are opened lazily.
pub fn build(
    config: tokio_postgres::Config,
    size: usize,
    wait: Duration,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
}

/// Opens one connection outside the pool (migrations, administration) and
/// drives it on a background task.
pub async fn connect_one(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Opens one connection outside the pool that `LISTEN`s on `channels`; a
/// notification on any of them wakes `notify`, and so does the connection's
/// end (whoever waits looks again and finds the client closed). Channel
/// names are Sovra's own constants, never input.
pub async fn connect_listening(
    config: &tokio_postgres::Config,
    channels: &[&str],
    notify: std::sync::Arc<tokio::sync::Notify>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => notify.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "listening connection closed");
                    notify.notify_one();
                    break;
                }
                None => {
                    notify.notify_one();
                    break;
                }
            }
        }
    });
    for channel in channels {
        client.batch_execute(&format!("listen {channel}")).await?;
    }
    Ok(client)
}
