-- wrk: send the method WRK_METHOD (default GET) with the body in the file
-- named by WRK_BODY (if any), as JSON.
local method = os.getenv("WRK_METHOD")
if method and method ~= "" then wrk.method = method end
local file = os.getenv("WRK_BODY")
if file and file ~= "" then
  local f = io.open(file, "r")
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
