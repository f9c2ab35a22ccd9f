// Who is typing, and who has seen your last message: live-only signals of the open room.

import type { ChatClient } from "./client";
import type { Member } from "./gen/chat/v1/chat_pb";

/** How often the page renews "typing" while the user types (the server drops renewals
 * within 2 s and ends a flag 6 s after the last one). */
const RENEW_MS = 3_000;
/** A flag the page heard of but never heard end is dropped after this long. */
const FORGET_MS = 10_000;
/** "Seen by" shows in rooms of at most this many members (chatd sends read markers only
 * there). */
export const SEEN_BY_MEMBERS = 200;

/** Tells the room that this user types: on input (renewed while typing), and that they
 * stopped when the box is emptied. Sending ends it on the server by itself. */
export class TypingSender {
  private lastSent = 0;
  private active = false;

  constructor(
    private readonly client: ChatClient,
    private readonly room: () => string | undefined,
  ) {}

  input(text: string): void {
    const room = this.room();
    if (!room) return;
    if (text.trim() === "") {
      this.stop();
      return;
    }
    const now = Date.now();
    if (this.active && now - this.lastSent < RENEW_MS) return;
    this.active = true;
    this.lastSent = now;
    this.client.setTyping({ room, typing: true }).catch(() => {});
  }

  /** The box was emptied or the message sent: no more typing. */
  stop(): void {
    const room = this.room();
    if (this.active && room) this.client.setTyping({ room, typing: false }).catch(() => {});
    this.active = false;
  }

  /** A message went out: the server ended the flag already. */
  sent(): void {
    this.active = false;
  }
}

/** "Bob is typing…": the others' typing flags, shown in one line. */
export class TypingLine {
  private readonly typists = new Map<string, { name: string; timer: ReturnType<typeof setTimeout> }>();

  constructor(private readonly line: HTMLElement) {}

  set(member: Member, typing: boolean): void {
    const known = this.typists.get(member.userId);
    if (known) clearTimeout(known.timer);
    if (typing) {
      const timer = setTimeout(() => this.set(member, false), FORGET_MS);
      this.typists.set(member.userId, { name: member.displayName, timer });
    } else {
      this.typists.delete(member.userId);
    }
    this.render();
  }

  clear(): void {
    for (const { timer } of this.typists.values()) clearTimeout(timer);
    this.typists.clear();
    this.render();
  }

  private render(): void {
    const names = [...this.typists.values()].map((t) => t.name).sort();
    this.line.textContent =
      names.length === 0
        ? ""
        : names.length === 1
          ? `${names[0]} is typing…`
          : names.length <= 3
            ? `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`
            : "Several people are typing…";
  }
}

/** Everyone's read marker in the open room (the first page of ListReadMarkers, then the
 * live read_marker events). */
export class Markers {
  private readonly seqs = new Map<string, { name: string; seq: bigint }>();

  clear(): void {
    this.seqs.clear();
  }

  async load(client: ChatClient, room: string): Promise<void> {
    const page = await client.listReadMarkers({ room, pageSize: SEEN_BY_MEMBERS });
    for (const m of page.markers) if (m.member) this.set(m.member, m.seq);
  }

  set(member: Member, seq: bigint): void {
    const known = this.seqs.get(member.userId);
    if (!known || seq > known.seq) this.seqs.set(member.userId, { name: member.displayName, seq });
  }

  /** Who (other than `me`) has read up to `seq`, by name. */
  seenBy(seq: bigint, me: string | undefined): string[] {
    return [...this.seqs.entries()]
      .filter(([user, m]) => user !== me && m.seq >= seq)
      .map(([, m]) => m.name)
      .sort();
  }
}
