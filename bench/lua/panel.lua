-- wrk script for every API scenario of bench/run.py (one wrk thread, keep-alive connections).
--
-- Configured by environment (wrk hands script arguments only to the thread states, and done()
-- runs in the main state):
--   BENCH_SCENARIO  services | balance | status | status100 | add | mix | reject_key |
--                   reject_unknown_key | reject_ip | warm
--   BENCH_DATA      directory with users.tsv, resellers.tsv, unknown.tsv (bench/dataset.py)
--   BENCH_USERS     how many users (from the top of users.tsv) the load draws from
--   BENCH_NONCE     unique per run: idempotency keys never repeat across runs
--   BENCH_OFFSET    `warm` starts at this user (a warm-up is a series of short runs)
--   BENCH_OUT       where done() writes the JSON summary
--   BENCH_XFF_POOL  how many distinct client addresses X-Forwarded-For spreads over
--   BENCH_XFF_BASE  the first octet of those addresses
--
-- Every request names a client address in X-Forwarded-For (the server trusts 127.0.0.1 as a
-- proxy), so the per-IP limits apply as configured and the load is spread over many clients,
-- as it is behind nginx; only `reject_ip` sends everything from one address.

local scenario = os.getenv("BENCH_SCENARIO") or "balance"
local data = os.getenv("BENCH_DATA") or "."
local limit = tonumber(os.getenv("BENCH_USERS") or "100000")
local nonce = os.getenv("BENCH_NONCE") or "0"
local pool = tonumber(os.getenv("BENCH_XFF_POOL") or "40000")
local base = tonumber(os.getenv("BENCH_XFF_BASE") or "10")

local users, resellers, unknown, xff = {}, {}, {}, {}
local counter = tonumber(os.getenv("BENCH_OFFSET") or "0")
local bad_key = "psk_" .. string.rep("x", 47)

local function split(line)
  local out = {}
  for field in string.gmatch(line, "[^\t]+") do out[#out + 1] = field end
  return out
end

local function load(path, max, into)
  for line in io.lines(path) do
    if #into >= max then break end
    into[#into + 1] = split(line)
  end
end

function init(args)
  math.randomseed(os.time() + tonumber(nonce:sub(-6), 16))
  load(data .. "/users.tsv", limit, users)
  load(data .. "/resellers.tsv", 1000000, resellers)
  load(data .. "/unknown.tsv", 1000000, unknown)
  for i = 0, pool - 1 do
    xff[i + 1] = string.format("%d.%d.%d.%d", base, math.floor(i / 65536) % 256,
                               math.floor(i / 256) % 256, i % 256)
  end
end

local form = { ["Content-Type"] = "application/x-www-form-urlencoded" }

local function post(host, ip, body)
  form["Host"] = host
  form["X-Forwarded-For"] = ip
  return wrk.format("POST", "/api/v2", form, body)
end

local function any_ip() return xff[math.random(#xff)] end

local function simple(action)
  local u = users[math.random(#users)]
  return post(u[2], any_ip(), "key=" .. u[1] .. "&action=" .. action)
end

local function status_one()
  local r = resellers[math.random(#resellers)]
  local first = tonumber(string.match(r[4], "^(%d+)"))
  return post(r[2], any_ip(), "key=" .. r[1] .. "&action=status&order=" ..
              (first + math.random(0, 99)))
end

local function status_many()
  local r = resellers[math.random(#resellers)]
  return post(r[2], any_ip(), "key=" .. r[1] .. "&action=status&orders=" .. r[4])
end

local function add()
  local u = users[math.random(#users)]
  counter = counter + 1
  return post(u[2], any_ip(), "key=" .. u[1] .. "&action=add&service=" .. math.random(1, 166) ..
              "&link=https%3A%2F%2Finstagram.com%2Fp%2Fb" .. counter ..
              "&quantity=1000&idempotency_key=" .. nonce .. "-" .. counter)
end

local function mix()
  local p = math.random(100)
  if p <= 50 then return status_one() end
  if p <= 70 then return status_many() end
  if p <= 90 then return add() end
  if p <= 95 then return simple("balance") end
  return simple("services")
end

local function reject_key()
  -- Well-formed length and alphabet, wrong checksum: refused without a database lookup.
  local u = users[math.random(#users)]
  return post(u[2], any_ip(), "key=" .. bad_key .. "&action=balance")
end

local function reject_unknown_key()
  -- Checksum-valid keys that do not exist: one lookup each, then the negative cache.
  local k = unknown[math.random(#unknown)]
  return post(k[2], any_ip(), "key=" .. k[1] .. "&action=balance")
end

local function reject_ip()
  local u = users[math.random(#users)]
  return post(u[2], "192.0.2.77", "key=" .. u[1] .. "&action=balance")
end

local function warm()
  -- Each user once, in order, from BENCH_OFFSET: fills the server's key cache before anything
  -- is measured (wrk runs for its whole -d even when the thread stops early).
  counter = counter + 1
  local u = users[counter]
  if u == nil then
    wrk.thread:stop()
    u = users[1]
  end
  return post(u[2], any_ip(), "key=" .. u[1] .. "&action=balance")
end

local builders = {
  services = function() return simple("services") end,
  balance = function() return simple("balance") end,
  status = status_one,
  status100 = status_many,
  add = add,
  mix = mix,
  reject_key = reject_key,
  reject_unknown_key = reject_unknown_key,
  reject_ip = reject_ip,
  warm = warm,
}
local build = builders[scenario]

function request()
  return build()
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  -- Percentiles 1..99 (and the tail) describe the whole latency distribution: the report
  -- draws the `add` histogram from them.
  local pct = {}
  for p = 1, 99 do
    pct[#pct + 1] = string.format('"%d": %d', p, latency:percentile(p))
  end
  pct[#pct + 1] = string.format('"99.9": %d', latency:percentile(99.9))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "non2xx": %d, "timeouts": %d, ' ..
    '"latency_mean_us": %f, "latency_max_us": %d, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency.mean, latency.max, table.concat(pct, ", ")))
  out:close()
end
