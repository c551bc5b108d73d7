-- wrk: POST QueryVectors bodies, one per line of BODY_FILE, in turn (with
-- the headers given by -H; wrk.format replaces them when passed its own).
local bodies = {}
for line in io.lines(os.getenv("BODY_FILE")) do bodies[#bodies + 1] = line end
wrk.headers["Content-Type"] = "application/json"
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, nil, bodies[i])
end
