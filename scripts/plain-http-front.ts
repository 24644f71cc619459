// A TCP front for the local worker that turns TLS handshakes away at once, with a plain HTTP answer. Registry clients (skopeo, podman,
// containerd) try https first even for an "insecure" registry and fall back to http only when that fails;
// workerd never answers a TLS hello, so each pull would first wait ~10 s for a handshake timeout.
import net from "node:net";

/** The first byte of every TLS record that opens a handshake. */
const TLS_HANDSHAKE = 0x16;

export interface PlainHttpFront {
  port: number;
  close(): Promise<void>;
}

export function startPlainHttpFront(target: { host: string; port: number }, listen: { host: string; port: number }): Promise<PlainHttpFront> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    client.once("data", (first: Buffer) => {
      if (first[0] === TLS_HANDSHAKE) {
        // An HTTP answer, not just a closed socket: the docker CLI falls back to http only on "server gave
        // HTTP response to HTTPS client"; skopeo and podman fall back on any error.
        client.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      client.pause();
      // No Nagle delay on either side: small writes (headers, the ends of blobs) would otherwise wait for ACKs.
      client.setNoDelay(true);
      const upstream = net.connect({ port: target.port, host: target.host, noDelay: true }, () => {
        upstream.write(first);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      sockets.add(upstream);
      upstream.on("close", () => {
        sockets.delete(upstream);
        client.destroy();
      });
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) =>
      reject(error.code === "EADDRINUSE" ? new Error(`port ${listen.port} is already in use; set PORT to a free port`) : error),
    );
    server.listen(listen.port, listen.host, () => {
      const address = server.address() as net.AddressInfo;
      resolve({
        port: address.port,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}
