use std::time::Duration;

use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};

use crate::Error;

/// A Redis client plus one shared, self-reconnecting connection.
///
/// Workers also open one dedicated connection each for their blocking reads, because a
/// blocking command on the shared multiplexed connection would stall every other command.
#[derive(Clone)]
pub struct RedisConn {
    client: Client,
    shared: ConnectionManager,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn").finish_non_exhaustive()
    }
}

impl RedisConn {
    /// Connects to `url` (`redis://host:port/db`). Fails if Redis cannot be reached now;
    /// once connected, the shared connection reconnects by itself.
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, Error> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            // 500 ms (the redis-rs default) turns a brief stall into an error
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let shared = client.get_connection_manager_with_config(config).await?;
        Ok(Self { client, shared })
    }

    /// The shared connection.
    pub fn shared(&self) -> ConnectionManager {
        self.shared.clone()
    }

    /// The client, to open other connections.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A new connection without a response timeout, for blocking reads.
    pub(crate) async fn dedicated(&self) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(2)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}
