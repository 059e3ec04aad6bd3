// A webhook receiver for scripts/bench: answers 200 at once and counts the
// updates in each statusgw batch. Usage: node webhook-receiver.mjs PORT
import http from "node:http";

let updates = 0, requests = 0;
http.createServer((req, res) => {
  if (req.method === "GET") { // the bench reads the counters
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ updates, requests }));
    return;
  }
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    requests++;
    try { updates += JSON.parse(body).data.updates.length; } catch {}
    res.writeHead(200);
    res.end();
  });
}).listen(Number(process.argv[2]), "127.0.0.1");
