// Streaming load: opens STREAMS concurrent SSE requests to a Messages endpoint and
// records the time to first byte of each stream and the delay of each chunk: its
// arrival minus the moment the upstream wrote it (stamped in the chunk, same clock).
// Prints one JSON summary line.
//
//   node bench/stream_load.js URL STREAMS CHUNKS INTERVAL_MS [RAMP_MS]
// Prints "open" once every stream has its first byte (for memory sampling).
"use strict";
const http = require("http");

const [url, streams, chunks, interval, ramp] = process.argv.slice(2).map((v, i) => (i ? Number(v) : v));
const target = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1024, stream: true, messages: [{ role: "user", content: "hi" }] });
const stamp = /t=(\d+\.\d+);/g;
const { performance } = require("perf_hooks");
const wall = () => performance.timeOrigin + performance.now();

const ttfb = [];
const delays = [];
const steady = [];  // delays of chunks that arrived once every stream was open
let done = 0, errors = 0, opened = 0, incomplete = 0;
const began = process.hrtime.bigint();
const ms = (t) => Number(t) / 1e6;

function one() {
  const t0 = process.hrtime.bigint();
  let first = null, seen = 0, tail = "";
  const req = http.request({
    host: target.hostname, port: target.port, path: target.pathname, method: "POST", agent,
    headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body),
      "x-api-key": "sk-ant-bench-not-a-key", "anthropic-version": "2023-06-01",
      "x-bench-chunks": String(chunks), "x-bench-interval-ms": String(interval),
      "x-modeltrack-team": "bench", "x-modeltrack-app": "stream-load" },
  }, (res) => {
    res.setEncoding("utf8");
    res.on("data", (text) => {
      const now = process.hrtime.bigint();
      if (first === null) {
        first = now;
        ttfb.push(ms(now - t0));
        opened += 1;
        if (opened === streams) console.log("open");
      }
      // A stamp may be cut between two reads: scan only up to the last complete one.
      const scan = tail + text;
      const arrived = wall();
      let match, end = 0;
      stamp.lastIndex = 0;
      while ((match = stamp.exec(scan)) !== null) {
        seen += 1;
        delays.push(arrived - Number(match[1]));
        if (opened === streams) steady.push(arrived - Number(match[1]));
        end = stamp.lastIndex;
      }
      tail = scan.slice(Math.max(end, scan.length - 32));
    });
    res.on("end", () => {
      if (res.statusCode !== 200) errors += 1;
      else if (seen !== chunks) incomplete += 1;
      finish();
    });
    res.on("error", () => { errors += 1; finish(); });
  });
  req.on("error", () => { errors += 1; finish(); });
  req.end(body);
}

function finish() {
  done += 1;
  if (done < streams) return;
  const pct = (xs, p) => { if (!xs.length) return null; const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
  console.log(JSON.stringify({
    streams, errors, incomplete, seconds: ms(process.hrtime.bigint() - began) / 1000,
    ttfb_ms: { p50: pct(ttfb, 0.5), p99: pct(ttfb, 0.99) },
    chunk_delay_ms: { p50: pct(delays, 0.5), p99: pct(delays, 0.99) },
    steady_chunk_delay_ms: { p50: pct(steady, 0.5), p99: pct(steady, 0.99) },
    chunks: delays.length,
  }));
  agent.destroy();
}

const gap = (ramp || 0) / streams;
for (let i = 0; i < streams; i++) {
  if (gap) setTimeout(one, i * gap); else one();
}
