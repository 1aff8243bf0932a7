-- wrk script used by bench/timeseries.py: InfluxDB line protocol to
-- POST /api/v2/write?precision=ms, from bodies built before the run (so the
-- client only sends). Each wrk thread builds WRK_LP_BODIES bodies (default
-- 400) of WRK_LP_POINTS lines (default 5,000), one point each, cycling
-- over WRK_LP_SERIES series of its own (default 10; series body k is
-- k mod series), each series' timestamps rising 1 ms per point from
-- body to body. With fewer connections per thread than series, two bodies
-- of one series are never in flight at once, so every point is an append
-- (no overwrite) until the bodies wrap around: size the run so they don't.
-- Prints one JSON line with the figures.
local counter = 0

setup = function(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

init = function(args)
  local n = tonumber(os.getenv("WRK_LP_BODIES") or "400")
  points = tonumber(os.getenv("WRK_LP_POINTS") or "5000")
  local series = tonumber(os.getenv("WRK_LP_SERIES") or "10")
  local base = 1700000000000
  local next_ts = {}
  bodies = {}
  for k = 0, n - 1 do
    local s = k % series
    local t0 = next_ts[s] or base
    local prefix = string.format("lp,host=t%d_s%d v=", tid, s)
    local lines = {}
    for i = 1, points do
      local t = t0 + i
      lines[i] = prefix .. (t % 1000) .. " " .. t
    end
    next_ts[s] = t0 + points
    bodies[k + 1] = table.concat(lines, "\n")
  end
  i = 0
  headers = {["Content-Type"] = "text/plain"}
end

request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/api/v2/write?precision=ms", headers, bodies[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p99_us\":%d,\"socket_errors\":%d,\"non2xx\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
