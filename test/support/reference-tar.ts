// The builder's tar writer before builder-service/tar-blocks.ts, kept as the reference its bytes are checked
// against: tar-stream's pack, fed the same header fields, with each file streamed in. Slow (every 64 KiB chunk
// passes through two streams), but plainly tar-stream's own output.
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { FIXED_MTIME, type TarEntry } from "../../builder-service/tarball.ts";

/** A tar stream of the entries, reading file contents one at a time as the consumer pulls. */
export function referenceTarStream(entries: readonly TarEntry[]): Readable {
  const pack = tar.pack();
  void (async () => {
    try {
      for (const entry of entries) {
        const header = {
          name: entry.name,
          mode: entry.mode,
          mtime: FIXED_MTIME,
          uid: 0,
          gid: 0,
          uname: "",
          gname: "",
        };
        if (entry.type === "file") {
          const sink = pack.entry({ ...header, type: "file", size: entry.size });
          await pipeline(createReadStream(entry.source), sink);
        } else if (entry.type === "symlink") {
          await new Promise<void>((resolve, reject) =>
            pack.entry({ ...header, type: "symlink", linkname: entry.target }, (err) =>
              err ? reject(err) : resolve(),
            ),
          );
        } else {
          await new Promise<void>((resolve, reject) =>
            pack.entry({ ...header, type: "directory" }, (err) => (err ? reject(err) : resolve())),
          );
        }
      }
      pack.finalize();
    } catch (error) {
      pack.destroy(error instanceof Error ? error : new Error(String(error)));
    }
  })();
  // tar-stream packs are streamx streams; wrap so Node's stream utilities see a Node Readable.
  return Readable.from(pack);
}
