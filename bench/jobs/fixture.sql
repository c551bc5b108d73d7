-- bench/jobs.sh: one queue for the throughput runs.
select pgmq.create('bench');
