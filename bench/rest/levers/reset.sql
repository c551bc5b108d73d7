-- pgbench -M simple: the session reset Sovra sends before each request (sovra_pg::RESET_SQL), alone.
CLOSE ALL; RESET ROLE; RESET ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;
