// One room's live stream: join, resume after a reload or a dropped connection with
// resume_after_seq (the last seq shown, kept per room in sessionStorage), reconnect
// with backoff, and stop on errors that retrying cannot fix.

import { Code, ConnectError } from "@connectrpc/connect";
import type { ChatClient } from "./client";
import type { Joined, Member, Message } from "./gen/chat/v1/chat_pb";
import type { Change } from "./message";

/** What a room session tells the page. */
export interface RoomEvents {
  /** The stream (re)joined: the room's name, its member count and the members listed (all of
   * them, or the first 500 when `membersTruncated`). `firstJoin` is true once per session. */
  joined(joined: Joined, firstJoin: boolean): void;
  /** A message, in seq order with the changes, each once per stream. */
  message(message: Message): void;
  /** A change of a message (edit, deletion, reaction), in seq order, each once. */
  changed(change: Change): void;
  memberJoined(member: Member): void;
  memberLeft(member: Member): void;
  /** Someone else started or stopped typing (live only). */
  typing(member: Member, typing: boolean): void;
  /** Someone's read marker moved (live only). */
  readMarker(member: Member, seq: bigint): void;
  /** The connection state changed. */
  connection(state: "connecting" | "live" | "reconnecting", detail?: string): void;
  /** The session ended on an error that retrying cannot fix. */
  failed(error: ConnectError): void;
}

const SEQ_PREFIX = "chatd.seq.";
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

/** Errors that the same request will get again. */
const FATAL = new Set([
  Code.InvalidArgument,
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.NotFound,
  Code.FailedPrecondition,
  Code.Unimplemented,
]);

export function storedSeq(room: string): bigint | undefined {
  const raw = sessionStorage.getItem(SEQ_PREFIX + room);
  if (raw === null || !/^\d+$/.test(raw)) return undefined;
  return BigInt(raw);
}

function storeSeq(room: string, seq: bigint | undefined): void {
  if (seq === undefined) sessionStorage.removeItem(SEQ_PREFIX + room);
  else sessionStorage.setItem(SEQ_PREFIX + room, seq.toString());
}

export class RoomSession {
  private readonly stop = new AbortController();
  /** The last seq delivered to the page; the stream resumes after it. */
  private lastSeq: bigint | undefined;

  constructor(
    private readonly client: ChatClient,
    /** The room as the user typed it, trimmed and lowercased (the server's normal form). */
    readonly room: string,
    private readonly events: RoomEvents,
  ) {
    this.lastSeq = storedSeq(room);
  }

  /** The seq the page has shown everything up to (for loading history below it). */
  get shownUpTo(): bigint | undefined {
    return this.lastSeq;
  }

  close(): void {
    this.stop.abort();
  }

  get closed(): boolean {
    return this.stop.signal.aborted;
  }

  /** Runs until closed or failed. */
  async run(): Promise<void> {
    let retryMs = FIRST_RETRY_MS;
    let firstJoin = true;
    while (!this.closed) {
      this.events.connection(firstJoin ? "connecting" : "reconnecting");
      let detail = "the server closed the stream";
      try {
        const stream = this.client.joinRoom(
          { room: this.room, resumeAfterSeq: this.lastSeq },
          { signal: this.stop.signal },
        );
        for await (const response of stream) {
          const event = response.event;
          switch (event.case) {
            case "joined": {
              const joined = event.value;
              if (this.lastSeq === undefined) this.advance(joined.lastSeq);
              this.events.joined(joined, firstJoin);
              this.events.connection("live");
              firstJoin = false;
              retryMs = FIRST_RETRY_MS;
              break;
            }
            case "message":
              // A stream carries each seq once; a seq at or below the last one shown was
              // shown already (by an earlier stream of this session).
              if (this.lastSeq === undefined || event.value.seq > this.lastSeq) {
                this.events.message(event.value);
                this.advance(event.value.seq);
              }
              break;
            case "messageEdited":
            case "messageDeleted":
            case "reactionChanged":
              if (this.lastSeq === undefined || event.value.seq > this.lastSeq) {
                this.events.changed(event as Change);
                this.advance(event.value.seq);
              }
              break;
            case "memberJoined":
              if (event.value.member) this.events.memberJoined(event.value.member);
              break;
            case "memberLeft":
              if (event.value.member) this.events.memberLeft(event.value.member);
              break;
            case "typing":
              if (event.value.member) this.events.typing(event.value.member, event.value.typing);
              break;
            case "readMarker":
              if (event.value.member) this.events.readMarker(event.value.member, event.value.seq);
              break;
          }
        }
      } catch (e) {
        if (this.closed) return;
        const error = ConnectError.from(e);
        if (FATAL.has(error.code)) {
          this.close();
          this.events.failed(error);
          return;
        }
        if (error.code === Code.OutOfRange) {
          // The room has fewer messages than we remember (a new database): start afresh.
          this.advance(undefined);
          continue;
        }
        detail = error.rawMessage || Code[error.code];
      }
      if (this.closed) return;
      this.events.connection("reconnecting", `${detail}; retrying in ${retryMs / 1000}s`);
      await sleep(retryMs, this.stop.signal);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    }
  }

  private advance(seq: bigint | undefined): void {
    this.lastSeq = seq;
    storeSeq(this.room, seq);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
