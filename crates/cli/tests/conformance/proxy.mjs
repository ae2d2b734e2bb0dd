// A test-only reverse proxy: the MCP conformance suite cannot send a bearer
// token, so this forwards every request to Strata with one added.
// Usage: node proxy.mjs TARGET_ORIGIN TOKEN  (prints the port it listens on)
import http from "node:http";

const [target, token] = process.argv.slice(2);
const upstream = new URL(target);

const server = http.createServer((req, res) => {
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  const out = http.request(
    { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  out.on("error", (e) => {
    res.writeHead(502, { "content-type": "text/plain" });
    res.end(`proxy: ${e.message}`);
  });
  req.pipe(out);
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
