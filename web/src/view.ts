// The timeline (messages in seq order, each seq once, grouped by day and sender, changes
// applied as they come) and the member list.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Member, Message } from "./gen/chat/v1/chat_pb";
import { el } from "./dom";
import { type Change, type Context, type MessageActions, applyChange, quoteLine, renderMessage } from "./message";

const DAY = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });

/** "Today", "Yesterday" or the date, for a day separator. */
export function dayLabel(date: Date, now = new Date()): string {
  const day = (d: Date) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const diff = Math.round((day(now) - day(date)) / 86_400_000);
  if (diff === 0) return "Today";
  if (diff === 1) return "Yesterday";
  return DAY.format(date);
}

/** Messages of one sender within this long of each other share one heading. */
const GROUP_MS = 5 * 60_000;

/** The message list: one item per seq, kept in seq order, pinned to the newest while the
 * reader is at the bottom (also when an image loads late). */
export class Timeline {
  private readonly items = new Map<bigint, { item: HTMLLIElement; message: Message }>();
  /** Whether the reader is at the newest message: new content keeps it in view. */
  private pinned = true;
  /** "Seen by …" under one message (the reader's newest), when anyone has. */
  private seen: { seq: bigint; names: string[] } | null = null;

  constructor(
    private readonly list: HTMLOListElement,
    private readonly scroller: HTMLElement,
    private readonly me: () => string | undefined,
    private readonly actions: MessageActions,
  ) {
    scroller.addEventListener("scroll", () => {
      this.pinned = this.atBottom();
    }, { passive: true });
  }

  private atBottom(): boolean {
    return this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
  }

  /** Whether the newest message is in view. */
  get readingNewest(): boolean {
    return this.pinned;
  }

  clear(): void {
    this.items.clear();
    this.list.replaceChildren();
    this.pinned = true;
    this.seen = null;
  }

  /** Shows "Seen by …" under message `seq` (and nowhere else); no names, no line. */
  showSeen(seq: bigint | undefined, names: string[]): void {
    this.seen = seq !== undefined && names.length > 0 ? { seq, names } : null;
    for (const line of this.list.querySelectorAll(".seen")) line.remove();
    if (this.seen) {
      const found = this.items.get(this.seen.seq);
      if (found) this.markSeen(found.item);
    }
  }

  private markSeen(item: HTMLLIElement): void {
    if (!this.seen || item.dataset.seq !== this.seen.seq.toString()) return;
    const line = el("div", "seen", `Seen by ${this.seen.names.join(", ")}`);
    item.append(line);
    if (this.pinned) this.scrollToNewest();
  }

  get oldestSeq(): bigint | undefined {
    const first = this.list.firstElementChild as HTMLLIElement | null;
    return first ? BigInt(first.dataset.seq ?? "0") : undefined;
  }

  get newestSeq(): bigint | undefined {
    const last = this.list.lastElementChild as HTMLLIElement | null;
    return last ? BigInt(last.dataset.seq ?? "0") : undefined;
  }

  /** The newest message `user` sent among those shown. */
  newestFrom(user: string): Message | undefined {
    let item = this.list.lastElementChild as HTMLLIElement | null;
    while (item && item.dataset.sender !== user) item = item.previousElementSibling as HTMLLIElement | null;
    return item ? this.items.get(BigInt(item.dataset.seq ?? "0"))?.message : undefined;
  }

  /** Adds a live message (or a page right after joining); keeps the newest in view when it was. */
  add(message: Message): void {
    const wasPinned = this.pinned;
    this.insert(message);
    if (wasPinned) this.scrollToNewest();
  }

  /** Adds an older page above what is shown without moving what the reader is looking at;
   * `alsoAbove` changes more above it (the "Load older" button) in the same step. */
  addOlder(messages: Message[], alsoAbove?: () => void): void {
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    for (const message of messages) this.insert(message);
    alsoAbove?.();
    if (this.pinned) this.scrollToNewest();
    else this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
  }

  scrollToNewest(): void {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.pinned = true;
  }

  /** Applies a change (edit, deletion, reaction) to the message it names, when shown. */
  apply(change: Change): void {
    const found = this.items.get(change.value.messageSeq);
    if (found && applyChange(found.message, change, this.me())) this.redraw(found.message);
  }

  /** Takes the message as an answer gave it (after an edit, a deletion, a reaction), unless
   * what is shown is newer. */
  update(message: Message): void {
    const found = this.items.get(message.seq);
    if (found && message.updatedSeq > found.message.updatedSeq) this.redraw(message);
  }

  /** Scrolls to a shown message and highlights it for a moment. */
  show(seq: bigint): void {
    const found = this.items.get(seq);
    if (!found) return;
    found.item.scrollIntoView({ block: "center" });
    found.item.classList.add("highlight");
    setTimeout(() => found.item.classList.remove("highlight"), 1_500);
  }

  private context(): Context {
    return {
      me: this.me(),
      actions: this.actions,
      find: (seq) => this.items.get(seq)?.message,
      show: (seq) => this.show(seq),
      imageLoaded: () => {
        if (this.pinned) this.scrollToNewest();
      },
    };
  }

  /** Draws `message` again in place (and the replies that quote it). */
  private redraw(message: Message): void {
    const found = this.items.get(message.seq);
    if (!found) return;
    const item = renderMessage(message, this.context());
    item.className = found.item.className;
    item.dataset.time = found.item.dataset.time;
    item.dataset.day = found.item.dataset.day;
    found.item.replaceWith(item);
    this.items.set(message.seq, { item, message });
    this.markSeen(item);
    for (const quote of this.list.querySelectorAll<HTMLElement>(`.quote[data-reply-to="${message.seq}"]`)) {
      quote.textContent = quoteLine(message);
    }
    if (this.pinned) this.scrollToNewest();
  }

  private insert(message: Message): void {
    if (this.items.has(message.seq)) return;
    const item = renderMessage(message, this.context());
    this.items.set(message.seq, { item, message });
    const sent = message.sentAt ? timestampDate(message.sentAt) : undefined;
    if (sent) {
      item.dataset.time = String(sent.getTime());
      item.dataset.day = dayLabel(sent);
    }
    // Live messages come last: look for the place from the end.
    let after = this.list.lastElementChild as HTMLLIElement | null;
    while (after && BigInt(after.dataset.seq ?? "0") > message.seq) {
      after = after.previousElementSibling as HTMLLIElement | null;
    }
    if (after) after.after(item);
    else this.list.prepend(item);
    group(item);
    const next = item.nextElementSibling as HTMLLIElement | null;
    if (next) group(next);
  }
}

/** Marks `item` as the first of its day and as continuing its sender's run, from its
 * previous sibling. */
function group(item: HTMLLIElement): void {
  const previous = item.previousElementSibling as HTMLLIElement | null;
  const day = item.dataset.day;
  item.classList.toggle("new-day", day !== undefined && previous?.dataset.day !== day);
  const close =
    previous !== null &&
    previous.dataset.sender === item.dataset.sender &&
    previous.dataset.day === day &&
    Number(item.dataset.time ?? 0) - Number(previous.dataset.time ?? 0) < GROUP_MS;
  item.classList.toggle("continued", close);
}

/** The member list, by user id; marked stale while the stream is down. */
export class Members {
  private readonly members = new Map<string, Member>();

  constructor(
    private readonly list: HTMLUListElement,
    private readonly count: HTMLElement,
    private readonly me: () => string | undefined,
  ) {}

  reset(members: Member[]): void {
    this.members.clear();
    for (const member of members) this.members.set(member.userId, member);
    this.render();
  }

  joined(member: Member): void {
    this.members.set(member.userId, member);
    this.render();
  }

  left(member: Member): void {
    this.members.delete(member.userId);
    this.render();
  }

  private render(): void {
    const sorted = [...this.members.values()].sort((a, b) =>
      a.displayName.localeCompare(b.displayName),
    );
    this.count.textContent = String(sorted.length);
    this.list.replaceChildren(
      ...sorted.map((member) => {
        const you = member.userId === this.me() ? " (you)" : "";
        const item = el("li", undefined, member.displayName + you);
        item.dataset.userId = member.userId;
        item.title = member.userId;
        return item;
      }),
    );
  }
}
