// A tee whose branches advance together. ReadableStream.tee() reads the source as fast as the faster branch and
// queues every chunk the slower one hasn't taken yet, so a fast R2 upload beside a slow client would hold most of a
// layer in the isolate's memory. Here the source is read only when every branch still open has asked for more:
// memory stays at a chunk per branch, and the faster side simply waits.
//
// A branch that is cancelled (a client that hangs up) stops counting, so the others still get every byte; the
// source is cancelled only when no branch is left.

interface Branch {
  controller: ReadableStreamDefaultController<Uint8Array> | null;
  open: boolean;
  /** Resolves this branch's pending pull once a chunk (or the end) has been handed to it. */
  pulled: (() => void) | null;
}

export function lockstepTee(source: ReadableStream<Uint8Array>): [ReadableStream<Uint8Array>, ReadableStream<Uint8Array>] {
  const reader = source.getReader();
  const branches: Branch[] = [
    { controller: null, open: true, pulled: null },
    { controller: null, open: true, pulled: null },
  ];
  let reading = false;

  const settlePulls = () => {
    for (const branch of branches) {
      const pulled = branch.pulled;
      branch.pulled = null;
      pulled?.();
    }
  };

  const readWhenAllWant = async (): Promise<void> => {
    const open = branches.filter((branch) => branch.open);
    if (reading || open.length === 0 || open.some((branch) => branch.pulled === null)) return;
    reading = true;
    try {
      const { done, value } = await reader.read();
      open.forEach((branch, index) => {
        if (!branch.open) return; // cancelled while the read was under way
        if (done) branch.controller?.close();
        // The first open branch gets the chunk itself, any other a copy: a consumer may take over (detach) the
        // buffer it was given.
        else branch.controller?.enqueue(index === 0 ? value : value.slice());
      });
      if (done) for (const branch of branches) branch.open = false;
    } catch (error) {
      for (const branch of open) if (branch.open) branch.controller?.error(error);
      for (const branch of branches) branch.open = false;
    } finally {
      reading = false;
      settlePulls();
    }
  };

  const branchStream = (branch: Branch) =>
    new ReadableStream<Uint8Array>(
      {
        start(controller) {
          branch.controller = controller;
        },
        pull() {
          return new Promise<void>((resolve) => {
            branch.pulled = resolve;
            void readWhenAllWant();
          });
        },
        cancel(reason) {
          branch.open = false;
          const pulled = branch.pulled;
          branch.pulled = null;
          pulled?.();
          if (branches.every((other) => !other.open)) return reader.cancel(reason);
          // The branches left may have been waiting only for this one.
          void readWhenAllWant();
          return undefined;
        },
      },
      // Nothing is read ahead: pull() runs only when this branch's consumer is waiting for a chunk.
      { highWaterMark: 0 },
    );

  return [branchStream(branches[0]), branchStream(branches[1])];
}
