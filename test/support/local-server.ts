// A test's HTTP server on a free port of 127.0.0.1: its URL, and a close that also ends the connections clients
// keep open (which server.close() alone waits for).
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";

export async function listenLocally(server: Server): Promise<{ url: string; close: () => Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
