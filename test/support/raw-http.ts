// One HTTP exchange over a bare socket: the request's bytes go out exactly as given, and one response is read back.
// For what fetch refuses to send: malformed request lines, bytes no header may hold, broken or truncated framing.
import net from "node:net";

export interface RawAnswer {
  /** null when the server closed the connection (or reset it) without a byte of answer. */
  status: number | null;
  /** Lower-case names; a repeated header's values joined with ", ". */
  headers: Record<string, string>;
  body: Buffer;
}

interface Head {
  status: number;
  headers: Record<string, string>;
  /** Bytes of the head, CRLF CRLF included. */
  length: number;
}

function parseHead(buffer: Buffer): Head | null | "malformed" {
  const end = buffer.indexOf("\r\n\r\n");
  if (end < 0) return null;
  const lines = buffer.subarray(0, end).toString("latin1").split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0]);
  if (!status) return "malformed";
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) return "malformed";
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return { status: Number(status[1]), headers, length: end + 4 };
}

/** The body of a chunked message, or null while it is incomplete (trailers are skipped). */
function dechunk(buffer: Buffer): Buffer | null | "malformed" {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = buffer.indexOf("\r\n", at);
    if (lineEnd < 0) return null;
    const size = Number.parseInt(buffer.subarray(at, lineEnd).toString("latin1").split(";")[0].trim(), 16);
    if (!Number.isFinite(size) || size < 0) return "malformed";
    at = lineEnd + 2;
    // The last chunk: complete once the (possibly empty) trailer section has ended.
    if (size === 0) return buffer.indexOf("\r\n\r\n", lineEnd) >= 0 ? Buffer.concat(parts) : null;
    if (buffer.length < at + size + 2) return null;
    parts.push(buffer.subarray(at, at + size));
    at += size + 2;
  }
}

/**
 * Writes `bytes` to host:port (then shuts down the sending side when `endAfterWrite`), and reads one response,
 * skipping interim 1xx answers. Rejects when the answer is incomplete after `timeoutMs` or is not HTTP.
 */
export function rawRequest(
  origin: string,
  bytes: Buffer,
  options: { timeoutMs: number; endAfterWrite?: boolean; headRequest?: boolean },
): Promise<RawAnswer> {
  const { hostname, port } = new URL(origin);
  return new Promise<RawAnswer>((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) });
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (outcome: { answer: RawAnswer } | { error: Error }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if ("answer" in outcome) resolve(outcome.answer);
      else reject(outcome.error);
    };
    const shown = () => JSON.stringify(received.subarray(0, 300).toString("latin1"));
    const timer = setTimeout(
      () => finish({ error: new Error(`no complete answer within ${options.timeoutMs} ms; received ${shown()}`) }),
      options.timeoutMs,
    );

    /** Whether `received` holds a whole response (closed: the server has closed the connection). */
    const tryParse = (closed: boolean) => {
      for (;;) {
        const head = parseHead(received);
        if (head === "malformed") return finish({ error: new Error(`the answer is not HTTP: ${shown()}`) });
        if (head === null) {
          if (closed) {
            if (received.length === 0) return finish({ answer: { status: null, headers: {}, body: Buffer.alloc(0) } });
            return finish({ error: new Error(`the connection closed in the middle of the answer's head: ${shown()}`) });
          }
          return;
        }
        if (head.status >= 100 && head.status < 200) {
          received = received.subarray(head.length);
          continue;
        }
        const rest = received.subarray(head.length);
        const answer = (body: Buffer) => finish({ answer: { status: head.status, headers: head.headers, body } });
        if (options.headRequest || head.status === 204 || head.status === 304) return answer(Buffer.alloc(0));
        if (/chunked/i.test(head.headers["transfer-encoding"] ?? "")) {
          const body = dechunk(rest);
          if (body === "malformed") return finish({ error: new Error(`malformed chunked answer: ${shown()}`) });
          if (body) return answer(body);
          if (closed)
            return finish({ error: new Error(`the connection closed in the middle of a chunked answer: ${shown()}`) });
          return;
        }
        const declared = head.headers["content-length"];
        if (declared !== undefined) {
          const length = Number(declared);
          if (!/^\d+$/.test(declared)) return finish({ error: new Error(`malformed Content-Length ${declared}`) });
          if (rest.length >= length) return answer(rest.subarray(0, length));
          if (closed)
            return finish({
              error: new Error(`the connection closed after ${rest.length} of ${length} bytes of body: ${shown()}`),
            });
          return;
        }
        if (closed) return answer(rest);
        return;
      }
    };

    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      tryParse(false);
    });
    socket.on("end", () => tryParse(true));
    // A reset (the server refusing the rest of a request) counts as a close: what arrived before it is the answer.
    socket.on("error", () => tryParse(true));
    socket.on("close", () => tryParse(true));
    socket.on("connect", () => {
      socket.write(bytes, () => {
        if (options.endAfterWrite) socket.end();
      });
    });
  });
}
