-- GET /rest/v1/items?id=eq.N&select=* with N random in 1..10000.
request = function()
  return wrk.format("GET", wrk.path .. "?select=*&id=eq." .. math.random(1, 10000))
end
