pub(crate) mod realtime_client;
