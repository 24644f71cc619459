// workerd's own output, passed on to this process's, minus the one report that is routine for a registry: a
// client hanging up while a blob is still being written to it ("disconnected: ::write(...): Broken pipe", with its
// stack line). skopeo does that whenever the destination already has a layer.
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";

const CLIENT_WENT_AWAY = /disconnected: ::write\(.*\): (Broken pipe|Connection reset by peer)/;

export function forwardWorkerdOutput(stdout: Readable, stderr: Readable): void {
  stdout.pipe(process.stdout);
  let skipStack = false;
  createInterface({ input: stderr, crlfDelay: Infinity }).on("line", (line) => {
    if (CLIENT_WENT_AWAY.test(line)) {
      skipStack = true;
      return;
    }
    const isStack = line.startsWith("stack: ");
    if (skipStack && isStack) {
      skipStack = false;
      return;
    }
    skipStack = false;
    process.stderr.write(`${line}\n`);
  });
}
