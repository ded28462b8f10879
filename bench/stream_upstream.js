// A paced fake upstream for streaming benchmarks: Anthropic-shaped SSE, one
// content_block_delta every INTERVAL ms, CHUNKS of them, then the usage events.
// Node's event loop keeps its CPU share low even with thousands of open streams.
//
//   node bench/stream_upstream.js PORT
// A request may set x-bench-chunks and x-bench-interval-ms (defaults 20 and 50).
"use strict";
const http = require("http");

const port = Number(process.argv[2]);
const usage = {
  input_tokens: 120, cache_creation_input_tokens: 2000, cache_read_input_tokens: 50000,
  cache_creation: { ephemeral_5m_input_tokens: 1500, ephemeral_1h_input_tokens: 500 },
};
const event = (name, data) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
const start = event("message_start", {
  type: "message_start",
  message: { id: "msg_bench", type: "message", role: "assistant", model: "claude-sonnet-4-5-20250929",
    content: [], stop_reason: null, stop_sequence: null, usage: { ...usage, output_tokens: 1 } },
}) + event("content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } });
// Each delta carries the moment it was written (epoch ms), so the load client can
// measure how long the chunk took to arrive, whatever path it took.
const { performance } = require("perf_hooks");
const now = () => performance.timeOrigin + performance.now();
const delta = () => event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: `t=${now().toFixed(3)};` } });
const end = (chunks) =>
  event("content_block_stop", { type: "content_block_stop", index: 0 }) +
  event("message_delta", { type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null },
    usage: { input_tokens: 120, cache_creation_input_tokens: 2000, cache_read_input_tokens: 50000, output_tokens: chunks } }) +
  event("message_stop", { type: "message_stop" });

const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    const chunks = Number(req.headers["x-bench-chunks"] || 20);
    const interval = Number(req.headers["x-bench-interval-ms"] || 50);
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.write(start);
    let sent = 0;
    const timer = setInterval(() => {
      res.write(delta());
      sent += 1;
      if (sent === chunks) {
        clearInterval(timer);
        res.end(end(chunks));
      }
    }, interval);
    res.on("close", () => clearInterval(timer));
  });
});
server.keepAliveTimeout = 120000;
server.maxConnections = 100000;
server.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
