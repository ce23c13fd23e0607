-- The script wrk runs for every load. Arguments after `--`: the path, the
-- body template file (`@ID@` replaced by a unique id on every request, so the
-- ledger runs each push, as Pub/Sub's would), the token file (`{tid}`
-- replaced by the wrk thread's number, 1-based), a prefix that makes this
-- run's ids its own (a warm-up, a second instance or a later run must not
-- send the same ids: those would be duplicates, answered without running),
-- and optionally a file of hostile tokens and how often (every Nth request)
-- to send one. `done`
-- prints one `BENCH_JSON` line that benches/load/load.rs parses.
threads = {}
counter = 0
wraps = 0
statuses = {}
local tokens, hostile = {}, {}
local next_token, next_hostile, every = 1, 1, 0
local path, template, run

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function read_lines(file)
  local t = {}
  for line in io.lines(file) do
    if #line > 0 then t[#t + 1] = line end
  end
  return t
end

function init(args)
  path = args[1]
  local f = assert(io.open(args[2], "rb"))
  template = f:read("*a")
  f:close()
  tokens = read_lines((string.gsub(args[3], "{tid}", tostring(tid))))
  run = args[4]
  if args[5] ~= nil and args[5] ~= "" then
    hostile = read_lines(args[5])
    every = tonumber(args[6])
  end
end

function request()
  counter = counter + 1
  local token
  if every > 0 and counter % every == 0 then
    token = hostile[next_hostile]
    next_hostile = next_hostile % #hostile + 1
  else
    token = tokens[next_token]
    if #tokens > 1 then
      next_token = next_token + 1
      if next_token > #tokens then
        next_token = 1
        wraps = wraps + 1
      end
    end
  end
  local body = (string.gsub(template, "@ID@", run .. "-" .. tid .. "-" .. counter))
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local counts, total_wraps = {}, 0
  for _, t in ipairs(threads) do
    total_wraps = total_wraps + (t:get("wraps") or 0)
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do
        counts[tostring(k)] = (counts[tostring(k)] or 0) + v
      end
    end
  end
  local parts = {}
  for k, v in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"wraps":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    total_wraps, table.concat(parts, ",")))
end
