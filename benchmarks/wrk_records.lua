-- wrk script of bench_http_peer.py: PUT or GET /v1/records/{id}?namespace=NS.
-- BENCH_METHOD (PUT|GET), BENCH_NS, BENCH_RECORDS (1: the record "hot"; N: r0000..r{N-1},
-- uniformly random). Every PUT body is new (thread number + a counter), so no write is a
-- no-op. done() prints one line "JSON {...}" with the figures, non-2xx counted exactly.

local method = os.getenv("BENCH_METHOD") or "PUT"
local ns = os.getenv("BENCH_NS") or "default"
local records = tonumber(os.getenv("BENCH_RECORDS") or "1")
local pad = string.rep("x", 120)
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  non2xx = 0
  n = 0
end

function request()
  n = n + 1
  local id = "hot"
  if records > 1 then
    id = string.format("r%04d", math.random(0, records - 1))
  end
  local path = "/v1/records/" .. id .. "?namespace=" .. ns
  if method == "GET" then
    return wrk.format("GET", path)
  end
  local body = string.format(
    '{"content":{"author":"bench","body":"%s","n":%d,"tags":["a","b"],"w":"t%d"}}',
    pad, n, tid)
  return wrk.format("PUT", path, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
