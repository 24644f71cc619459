// Serves a fetch-style handler (Request -> Response) from Node's HTTP server, streaming both ways,
// so the builder's routes are written the same way as the worker's.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { errorBody } from "../common/registry-errors.ts";

/** Request headers the builder reads (Node's default): the worker's signed requests use well under 1 KiB. */
const MAX_HEADER_BYTES = 16 * 1024;

export type FetchHandler = (request: Request) => Promise<Response>;

function toRequest(message: IncomingMessage, origin: string): Request {
  const headers = new Headers();
  for (const [name, value] of Object.entries(message.headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  const method = message.method ?? "GET";
  const hasBody = method !== "GET" && method !== "HEAD";
  return new Request(new URL(message.url ?? "/", origin), {
    method,
    headers,
    body: hasBody ? (Readable.toWeb(message) as ReadableStream<Uint8Array>) : undefined,
    // Required by Node's fetch for streamed request bodies.
    ...(hasBody ? { duplex: "half" } : {}),
  });
}

async function send(response: Response, res: ServerResponse, isHead: boolean): Promise<void> {
  // The client hung up before the answer was ready (in the middle of its request body, say): nobody to write to,
  // and nothing that failed on the builder's side.
  if (res.destroyed || !res.socket || res.socket.destroyed) {
    await response.body?.cancel();
    return;
  }
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => (headers[name] = value));
  res.writeHead(response.status, headers);
  if (!response.body || isHead) {
    await response.body?.cancel();
    res.end();
    return;
  }
  try {
    await pipeline(Readable.fromWeb(response.body as import("node:stream/web").ReadableStream<Uint8Array>), res);
  } catch (error) {
    // The client closed the connection before the whole answer was written (a broken body gives its own error).
    if ((error as NodeJS.ErrnoException).code === "ERR_STREAM_PREMATURE_CLOSE") return;
    throw error;
  }
}

/**
 * Node answers a request it cannot parse on its own, with a status line and no body. These answers say which limit
 * was hit and its value, in the registry's error format, as the builder's other refusals do.
 */
function refuseUnparsed(server: Server, error: NodeJS.ErrnoException, socket: Duplex): void {
  const refusal =
    error.code === "HPE_HEADER_OVERFLOW"
      ? {
          status: "431 Request Header Fields Too Large",
          message: `request headers too large: the builder takes at most ${MAX_HEADER_BYTES} bytes of headers`,
        }
      : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? {
            status: "408 Request Timeout",
            message: `the request did not arrive in time: the builder waits at most ${server.headersTimeout / 1000} s for the headers and ${server.requestTimeout / 1000} s for the whole request`,
          }
        : {
            status: "400 Bad Request",
            message: `the request is not HTTP the builder can read (${error.code ?? error.message})`,
          };
  // As Node does by default: no answer into a closed socket, nor into one where a response has begun.
  const answering = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage?.headersSent;
  if (!socket.writable || error.code === "ECONNRESET" || answering) {
    socket.destroy();
    return;
  }
  // An answer to HEAD has no body: bytes after its head would be read as garbage. The bytes Node was parsing start
  // with the request's method when the request arrived in one piece, as it does from any client but a very slow one.
  const head =
    (error as NodeJS.ErrnoException & { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString("latin1") === "HEAD ";
  socket.end(rawRefusal(refusal.status, refusal.message, head));
}

/** A registry error as raw HTTP, for a socket Node hands over without a response object. */
function rawRefusal(status: string, message: string, headOnly = false): string {
  const body = JSON.stringify(errorBody("UNSUPPORTED", message));
  const head = `HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
  return headOnly ? head : `${head}${body}`;
}

export function serveFetch(handler: FetchHandler, onError: (error: unknown) => void): Server {
  // Host is not required: the builder routes by path alone, and Node's own 400 for a missing one has no error body.
  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES, requireHostHeader: false }, (req, res) => {
    let request: Request;
    try {
      request = toRequest(req, `http://${req.headers.host ?? "localhost"}`);
    } catch (error) {
      // What Node's parser lets through but fetch's Request refuses (the methods TRACE and TRACK, a Host header
      // that makes no URL) would otherwise throw out of this callback and stop the builder.
      const body = JSON.stringify(
        errorBody("UNSUPPORTED", `the request is not one the builder can read (${(error as Error).message})`),
      );
      res.writeHead(400, {
        "content-type": "application/json",
        "content-length": String(Buffer.byteLength(body)),
        connection: "close",
      });
      res.end(body);
      return;
    }
    handler(request)
      .then((response) => send(response, res, req.method === "HEAD"))
      .catch((error) => {
        onError(error);
        if (!res.headersSent) res.writeHead(500, { "content-type": "application/json" });
        // A stream that broke mid-body must not look complete to the client.
        res.destroy();
      });
  });
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => refuseUnparsed(server, error, socket));
  // Node hands CONNECT requests over as bare sockets, which it would otherwise close without a word.
  server.on("connect", (_request: IncomingMessage, socket: Duplex) => {
    socket.on("error", () => socket.destroy());
    socket.end(rawRefusal("405 Method Not Allowed", "the builder serves no CONNECT requests"));
  });
  return server;
}
