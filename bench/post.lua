-- wrk: POST a small chat completion request with an API key and attribution headers,
-- and count the requests sent (printed as "sent N"), so that the harness can check
-- that every call that reached modeltrack left exactly one event.
wrk.method = "POST"
-- MODELTRACK_BENCH_BODY replaces the body (run.py's BUDGET_BODY, for calls under a budget).
wrk.body = os.getenv("MODELTRACK_BENCH_BODY") or '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello"}],"max_tokens":50}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
wrk.headers["X-ModelTrack-Team"] = "bench"
wrk.headers["X-ModelTrack-App"] = "wrk"

local threads = {}
function setup(thread)
   table.insert(threads, thread)
end

sent = 0
local prepared = nil
function request()
   sent = sent + 1
   if prepared == nil then prepared = wrk.format() end
   return prepared
end

function done(summary, latency, requests)
   local total = 0
   for _, thread in ipairs(threads) do total = total + thread:get("sent") end
   io.write(string.format("sent %d\n", total))
end
