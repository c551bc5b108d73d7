pub(crate) mod auth_client;
pub(crate) mod realtime_client;
