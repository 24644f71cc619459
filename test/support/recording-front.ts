// A recording HTTP proxy in front of a running registry, for the real-client tests:
// - it records what each client asked for (method, path, Accept, User-Agent), so a test can check that every
//   client got the manifest flavour its Accept header asked for;
// - it answers a TLS ClientHello with a plain "HTTP/1.1 400", the way a plain-HTTP server does. Go's net/http
//   turns that into "server gave HTTP response to HTTPS client", which is the one error on which the docker CLI
//   (`docker manifest inspect --insecure`) falls back from https to http, as the stack's own front
//   (scripts/plain-http-front.ts) does at the TCP level.
import http from "node:http";
import type { AddressInfo } from "node:net";

export interface RecordedRequest {
  method: string;
  path: string;
  accept: string | null;
  userAgent: string | null;
}

export interface RecordingFront {
  /** host:port, as image references need it. */
  host: string;
  requests: RecordedRequest[];
  /** The requests whose path contains /manifests/, optionally from one user agent only. */
  manifestRequests(userAgentPrefix?: string): RecordedRequest[];
  close(): Promise<void>;
}

const BAD_REQUEST = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

export function startRecordingFront(registryUrl: string): Promise<RecordingFront> {
  const target = new URL(registryUrl);
  const requests: RecordedRequest[] = [];
  const server = http.createServer((req, res) => {
    requests.push({
      method: req.method ?? "",
      path: req.url ?? "",
      accept: req.headers.accept ?? null,
      userAgent: req.headers["user-agent"] ?? null,
    });
    const upstream = http.request(
      {
        host: target.hostname,
        port: Number(target.port),
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: target.host },
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", (error) => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end(`recording front: ${error.message}`);
    });
    req.pipe(upstream);
  });
  // A TLS ClientHello (or any other garbage) fails HTTP parsing: answer like a plain-HTTP server would.
  server.on("clientError", (_error, socket) => {
    if (socket.writable) socket.end(BAD_REQUEST);
    else socket.destroy();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        host: `127.0.0.1:${port}`,
        requests,
        manifestRequests: (userAgentPrefix) =>
          requests.filter(
            (r) => r.path.includes("/manifests/") && (!userAgentPrefix || r.userAgent?.startsWith(userAgentPrefix)),
          ),
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}
