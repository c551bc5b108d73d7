//! Queries through the connection's prepared-statement cache. The auth
//! pool always runs as `supabase_auth_admin` (no per-request role switch),
//! so a statement prepared once is valid for the connection's life, and
//! repeated queries skip parsing and planning and a round trip.

use std::future::Future;

use sovra_pg::GenericClient;
use sovra_pg::tokio_postgres::types::ToSql;
use sovra_pg::tokio_postgres::{Error, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) trait Cached: GenericClient + Sync {
    fn c_query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query(&statement, params).await
        }
    }

    fn c_query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_opt(&statement, params).await
        }
    }

    fn c_query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_one(&statement, params).await
        }
    }

    fn c_execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.execute(&statement, params).await
        }
    }
}

impl<T: GenericClient + Sync> Cached for T {}
