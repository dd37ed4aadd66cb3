// node-media-server for the interop tests: RTMP only, on 127.0.0.1, recording every publish.
//   node nms.js PORT DIR
// records to DIR/record/APP/KEY/*.flv and keeps its store in DIR/data; SIGTERM stops it.
"use strict";
const path = require("node:path");
const NodeMediaServer = require("node-media-server");

const [port, dir] = process.argv.slice(2);
if (!port || !dir) {
  console.error("usage: node nms.js PORT DIR");
  process.exit(2);
}
const nms = new NodeMediaServer({
  bind: "127.0.0.1",
  rtmp: { port: Number(port) },
  record: { auto: true, path: path.join(dir, "record") },
  store: { path: path.join(dir, "data") },
});
nms.run();
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => nms.stop().finally(() => process.exit(0)));
}
