// Nix's machine-readable log (`--log-format internal-json`, Nix 2.4 and later): one `@nix {json}` line per event.
// nix-build is run with it, when its plan only downloads (early-layers.ts), for one fact the human-readable log never
// prints: the moment a path's download has finished, so that layers of fetched store paths can be written while Nix
// goes on with the others. Everything else is turned back into the lines the human-readable log has (messages,
// "building '...'...", "copying path '...' from '...'...", builders' output), so the build log shown to users, the
// plan the admission reads and the error messages read from the log stay as they were.

/** Activity types of Nix's logger (src/libutil/logging.hh), the ones read here. */
const ACT_BUILD = 105;
const ACT_SUBSTITUTE = 108;
/** Result type of a line a builder printed. */
const RES_BUILD_LOG_LINE = 101;
/** Nix's lvlInfo: what nix-build prints without -v. */
const LEVEL_INFO = 3;

/** A build or a download that has ended. It may have failed: what reads it checks the paths' validity. */
export type NixFinished = { kind: "built"; derivation: string } | { kind: "fetched"; path: string };

interface NixEvent {
  action?: unknown;
  id?: unknown;
  type?: unknown;
  level?: unknown;
  text?: unknown;
  msg?: unknown;
  fields?: unknown;
}

const STORE_PATH = /^\/nix\/store\/[0-9a-z]{32}-[^/]+$/;
/** Terminal colours, which Nix puts in the JSON log's messages but leaves out of its text log when not on a terminal. */
const COLOURS = new RegExp(`${String.fromCharCode(0x1b)}\\[[0-9;]*[A-Za-z]`, "g");
const plain = (text: string) => text.replace(COLOURS, "");

/** Decodes the log line by line; `onFinished` hears of each build and download as it ends. */
export class NixJsonLogDecoder {
  /** Running builds and downloads by activity id: a stop event names only the id. */
  private readonly running = new Map<number, NixFinished>();

  constructor(private readonly onFinished: (finished: NixFinished) => void) {}

  /** The human-readable lines a line of the log stands for (none for most events). */
  decode(line: string): string[] {
    if (!line.startsWith("@nix ")) return [line];
    let event: NixEvent;
    try {
      event = JSON.parse(line.slice("@nix ".length)) as NixEvent;
    } catch {
      return [line];
    }
    if (typeof event !== "object" || event === null) return [line];
    const level = typeof event.level === "number" ? event.level : 0;
    const fields = Array.isArray(event.fields) ? (event.fields as unknown[]) : [];
    switch (event.action) {
      case "msg":
        return level <= LEVEL_INFO && typeof event.msg === "string" ? plain(event.msg).split("\n") : [];
      case "start": {
        const [first] = fields;
        if (typeof event.id === "number" && typeof first === "string") {
          if (event.type === ACT_BUILD && first.endsWith(".drv") && STORE_PATH.test(first)) {
            this.running.set(event.id, { kind: "built", derivation: first });
          } else if (event.type === ACT_SUBSTITUTE && STORE_PATH.test(first)) {
            this.running.set(event.id, { kind: "fetched", path: first });
          }
        }
        return level <= LEVEL_INFO && typeof event.text === "string" && event.text ? [`${plain(event.text)}...`] : [];
      }
      case "stop": {
        if (typeof event.id !== "number") return [];
        const finished = this.running.get(event.id);
        if (finished) {
          this.running.delete(event.id);
          this.onFinished(finished);
        }
        return [];
      }
      case "result":
        return event.type === RES_BUILD_LOG_LINE && typeof fields[0] === "string" ? [fields[0]] : [];
      default:
        return [];
    }
  }
}

/**
 * The store path of a derivation's builder (`/nix/store/...-busybox` for `/nix/store/...-busybox/bin/busybox`), or
 * null when it is not in the store. The builder follows the outputs, input derivations, input sources and system.
 */
export function derivationBuilder(text: string): string | null {
  const fields =
    /^Derive\(\[(?:\("[^"\\]*","[^"\\]*","[^"\\]*","[^"\\]*"\),?)*\],\[(?:\("[^"\\]*",\[(?:"[^"\\]*",?)*\]\),?)*\],\[(?:"[^"\\]*",?)*\],"[^"\\]*","([^"\\]*)"/.exec(
      text,
    );
  const path = fields ? /^\/nix\/store\/[0-9a-z]{32}-[^/]+/.exec(fields[1]) : null;
  return path ? path[0] : null;
}
