-- wrk script for bench/serve.sh: every request POSTs one PNG (path in the IMAGE variable).
local f = assert(io.open(os.getenv("IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
local path = os.getenv("API") or "/api/predict"
request = function()
  return wrk.format(nil, path)
end
