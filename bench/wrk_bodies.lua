-- wrk script used by bench/cache.py: sends request bodies read from the file
-- $WRK_BODIES (one JSON body per line, cycled from a random start) to
-- $WRK_METHOD $WRK_PATH, and prints one JSON line with the figures.
local bodies = {}
local method = os.getenv("WRK_METHOD") or "POST"
local target = os.getenv("WRK_PATH") or "/"
local i = 0

init = function(args)
  local path = os.getenv("WRK_BODIES")
  if path and path ~= "" then
    for line in io.lines(path) do bodies[#bodies + 1] = line end
    math.randomseed(os.time() + #bodies)
    i = math.random(#bodies)
  end
end

request = function()
  if #bodies == 0 then
    return wrk.format(method, target)
  end
  i = i % #bodies + 1
  return wrk.format(method, target, {["Content-Type"] = "application/json"}, bodies[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"socket_errors\":%d,\"non2xx\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
