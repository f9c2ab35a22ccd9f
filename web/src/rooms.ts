// The user's rooms (ListRooms): newest activity first, with unread badges and the last
// message; refreshed while the page is open, and the open room kept read (MarkRead).

import type { ChatClient } from "./client";
import { ContentType, type Message, type RoomSummary } from "./gen/chat/v1/chat_pb";
import { el } from "./dom";

/** How often the list is fetched again while the page is visible. */
const REFRESH_MS = 10_000;
/** Rooms fetched: the first page is what the list shows. */
const PAGE_SIZE = 50;

export class RoomList {
  private rooms: RoomSummary[] = [];
  private current: string | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  /** The highest seq marked read per room by this page, so each mark is sent once. */
  private readonly marked = new Map<string, bigint>();

  constructor(
    private readonly client: ChatClient,
    private readonly list: HTMLUListElement,
    private readonly empty: HTMLElement,
    private readonly open: (room: string) => void,
    private readonly failed: (error: unknown) => void,
  ) {}

  /** Starts fetching (now and every REFRESH_MS while the page is visible). */
  start(): void {
    this.stop();
    void this.refresh();
    this.timer = setInterval(() => {
      if (document.visibilityState === "visible") void this.refresh();
    }, REFRESH_MS);
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.rooms = [];
    this.marked.clear();
    this.list.replaceChildren();
  }

  /** The open room, highlighted; its badge is cleared as it is read. */
  select(room: string | null): void {
    this.current = room;
    this.render();
  }

  async refresh(): Promise<void> {
    try {
      const page = await this.client.listRooms({ pageSize: PAGE_SIZE });
      this.rooms = page.rooms;
      this.render();
    } catch (e) {
      this.failed(e);
    }
  }

  /** A message arrived live in the open room: it becomes the room's last message, and the
   * room moves to the top. */
  saw(room: string, message: Message): void {
    const at = this.rooms.findIndex((r) => r.room === room);
    if (at < 0 || message.seq <= this.rooms[at].lastSeq) return;
    const [summary] = this.rooms.splice(at, 1);
    summary.lastMessage = message;
    summary.lastSeq = message.seq;
    this.rooms.unshift(summary);
    this.render();
  }

  /** Marks `room` read up to `seq` (once per seq), then shows the new count. */
  async markRead(room: string, seq: bigint): Promise<void> {
    if ((this.marked.get(room) ?? 0n) >= seq) return;
    this.marked.set(room, seq);
    try {
      await this.client.markRead({ room, seq });
      const known = this.rooms.find((r) => r.room === room);
      if (known) {
        known.readSeq = seq > known.readSeq ? seq : known.readSeq;
        known.unreadCount = 0n;
        this.render();
      } else {
        // A room joined by name becomes one of the user's rooms once marked read.
        await this.refresh();
      }
    } catch (e) {
      this.marked.delete(room);
      this.failed(e);
    }
  }

  private render(): void {
    this.empty.hidden = this.rooms.length > 0;
    this.list.replaceChildren(...this.rooms.map((room) => this.item(room)));
  }

  private item(summary: RoomSummary): HTMLLIElement {
    const item = el("li");
    item.dataset.room = summary.room;
    const button = el("button", "room");
    button.type = "button";
    const name = el("span", "name", summary.room);
    button.append(name);
    // The open room is read as it is shown: no badge for it.
    const unread = summary.room === this.current ? 0n : summary.unreadCount;
    if (unread > 0n) {
      const badge = el("span", "badge", unread >= 1000n ? "999+" : unread.toString());
      badge.setAttribute("aria-label", `${unread} unread`);
      button.append(badge);
    }
    const last = summary.lastMessage;
    if (last) {
      const what = last.contentType === ContentType.IMAGE ? "🖼 image" : last.content;
      button.append(el("span", "preview", `${last.sender?.displayName ?? "?"}: ${what}`));
    }
    if (summary.room === this.current) {
      item.classList.add("current");
      button.setAttribute("aria-current", "true");
    }
    button.addEventListener("click", () => this.open(summary.room));
    item.append(button);
    return item;
  }
}
