-- bench/jobs.sh: each wrk thread cycles send, read (one message, hidden for
-- 30 s) and delete (the last message its connections read), through
-- /rest/v1/rpc on pgmq_public; its connections share the cycle.
local step = 0
local last_id = nil

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
    path = "/rest/v1/rpc/delete"
    body = '{"queue_name":"bench","message_id":' .. (last_id or 0) .. '}'
  end
  step = (step + 1) % 3
  return wrk.format("POST", path, nil, body)
end

response = function(status, headers, body)
  local id = string.match(body, '"msg_id"%s*:%s*(%d+)')
  if id then
    last_id = id
  end
end
