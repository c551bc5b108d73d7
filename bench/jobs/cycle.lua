-- bench/jobs.sh: each wrk thread cycles send, read (one message, hidden for
-- 30 s) and delete, through /rest/v1/rpc on pgmq_public. A thread's
-- connections share one Lua state, so the ids read wait in a FIFO and each
-- delete takes the oldest: every message read is deleted exactly once, as
-- the pgbench reference does (an earlier version deleted "the last id read",
-- which several connections then deleted twice while other messages stayed,
-- invisible, for reads to skip over).
local step = 0
local read_ids = {}
local first = 1
local last = 0

request = function()
  local body
  local path
  if step == 0 then
    path = "/rest/v1/rpc/send"
    body = '{"queue_name":"bench","message":{"n":1}}'
  elseif step == 1 then
    path = "/rest/v1/rpc/read"
    body = '{"queue_name":"bench","sleep_seconds":30,"n":1}'
  else
    local id = 0
    if first <= last then
      id = read_ids[first]
      read_ids[first] = nil
      first = first + 1
    end
    path = "/rest/v1/rpc/delete"
    body = '{"queue_name":"bench","message_id":' .. id .. '}'
  end
  step = (step + 1) % 3
  return wrk.format("POST", path, nil, body)
end

response = function(status, headers, body)
  local id = string.match(body, '"msg_id"%s*:%s*(%d+)')
  if id then
    last = last + 1
    read_ids[last] = id
  end
end
