-- One call that clears what an earlier request may have left in a pooled
-- session (sovra_pg::RESET_SQL's seven statements): open cursors, the
-- session role, every setting made with SET or set_config(..., false),
-- LISTENs, session advisory locks, temporary tables and sequence state.
-- Request transactions call it first, inside the transaction, in the same
-- prepared statement as the request settings; a prepared call costs a
-- fraction of the seven statements parsed and run as separate transactions.
-- It must run as the caller (security invoker: RESET ROLE and RESET ALL act
-- on the session), with no SET clause of its own (one would put its
-- setting back on return) and only qualified names.
create or replace function sovra.reset_session() returns void
language plpgsql
as $$
begin
  execute 'CLOSE ALL';
  reset role;
  reset all;
  unlisten *;
  perform pg_catalog.pg_advisory_unlock_all();
  discard temp;
  discard sequences;
end
$$;

revoke all on function sovra.reset_session() from public;
grant execute on function sovra.reset_session() to authenticator;
