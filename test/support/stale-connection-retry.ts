// Node's fetch reuses idle keep-alive connections; when the server closes one just as a request is written on it,
// the request fails with "other side closed" (UND_ERR_SOCKET) before any answer. HTTP clients retry an idempotent
// request on a fresh connection in that case (RFC 9112, 9.3.1); the tests' fetch does too, once, for GET and HEAD
// only, so that a race of the test client's connection pool is not taken for the registry's answer.
const originalFetch = globalThis.fetch;

function staleConnection(error: unknown): boolean {
  const cause = (error as { cause?: { code?: unknown } } | null)?.cause;
  return error instanceof TypeError && cause?.code === "UND_ERR_SOCKET";
}

globalThis.fetch = async (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
  const method = (init?.method ?? (input instanceof Request ? input.method : "GET")).toUpperCase();
  try {
    return await originalFetch(input, init);
  } catch (error) {
    if ((method === "GET" || method === "HEAD") && staleConnection(error)) return originalFetch(input, init);
    throw error;
  }
};
