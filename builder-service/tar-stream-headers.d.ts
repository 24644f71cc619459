// The part of tar-stream's header encoder (tar-stream/headers.js, not covered by @types/tar-stream) that
// tar-blocks.ts uses to write the same headers as tar-stream's pack.
declare module "tar-stream/headers.js" {
  export interface Header {
    name: string;
    mode: number;
    mtime: Date;
    uid: number;
    gid: number;
    uname?: string;
    gname?: string;
    /** "file", "directory", "symlink", "pax-header", ... */
    type: string;
    size: number;
    linkname?: string;
    devmajor?: number;
    devminor?: number;
  }
  interface Headers {
    /** One 512-byte ustar header, or null when the name or link target does not fit one (pax is needed). */
    encode(header: Header): Buffer | null;
    /** A pax extended header's records for the name and link target. */
    encodePax(fields: { name: string; linkname?: string; pax?: Record<string, string> }): Buffer;
  }
  const headers: Headers;
  export default headers;
}
