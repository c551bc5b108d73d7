-- wrk: send the method WRK_METHOD (default GET) with the body in the file
-- named by WRK_BODY (if any), as JSON. With WRK_PATHS (a file of request
-- paths, one a line), each request goes to one of them picked at random.
local method = os.getenv("WRK_METHOD")
if method and method ~= "" then wrk.method = method end
local file = os.getenv("WRK_BODY")
if file and file ~= "" then
  local f = io.open(file, "r")
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
local paths = nil
local list = os.getenv("WRK_PATHS")
if list and list ~= "" then
  paths = {}
  for line in io.lines(list) do paths[#paths + 1] = line end
end
function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
function request()
  if paths then
    return wrk.format(nil, paths[math.random(#paths)])
  end
  return wrk.format()
end
