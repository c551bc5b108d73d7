//! The planner of Sovra's REST layer: it checks a parsed request
//! ([`sovra_rest_grammar::QueryParams`]) against the schema cache
//! ([`SchemaCache`]) and builds one parameterised SQL statement ([`plan`]),
//! as PostgREST's `Plan` and `Query` stages do. Errors carry PostgREST's
//! codes and statuses ([`ApiError`]).
//!
//! This crate is pure: no IO, no async, no database. Identifiers in the SQL
//! it builds come from the schema cache and are always quoted; request
//! values are always bound parameters.

mod call;
mod error;
mod openapi;
mod plan;
mod relationship;
mod schema;

pub use call::{
    Arguments, CallPlan, CallRequest, RawMedia, RoutineResult, parameter_names, plan_call,
};
pub use error::{ApiError, ErrorHeaders, sqlstate_status};
pub use openapi::openapi;
pub use plan::{
    Action, Metric, Nearest, Plan, RESPONSE_SETTINGS, Request, Statement, plan, plan_nearest,
};
pub use schema::{
    Column, ForeignKey, Relation, RelationKind, ReturnShape, Routine, RoutineParam, SchemaCache,
    TypeName, Volatility, quote_ident,
};

#[cfg(test)]
mod tests;
