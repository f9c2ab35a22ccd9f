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

/** The most members the page holds; in a bigger room it shows "Showing 5,000 of 100,000". */
export const MEMBERS_CAP = 5_000;

/** The page's elements of the member list. */
export interface MembersView {
  list: HTMLUListElement;
  /** The count on the button that opens the list on narrow screens ("2 here"). */
  count: HTMLElement;
  /** The list's heading ("2 members"). */
  title: HTMLElement;
  /** "Showing 500 of 100,000" while the list lacks members. */
  summary: HTMLElement;
  /** "Show more": the next ListMembers page. */
  more: HTMLButtonElement;
}

/**
 * The member list, by user id; marked stale while the stream is down. The count is the
 * room's (`joined` tells it, presence events move it), which in a big room is more than the
 * list: `joined` lists at most 500, and "Show more" pages through the rest (ListMembers)
 * up to MEMBERS_CAP. A complete list is sorted by name; one that is not stays in the order
 * the server listed it (you first, then by user id) with each page and newcomer after it.
 */
export class Members {
  private readonly members = new Map<string, Member>();
  /** How many members the room has (never fewer than are listed). */
  private total = 0;
  /** Whether the room may have members the list lacks. */
  private partial = false;
  /** Whether the list is in the server's order rather than by name (once partial, until reset). */
  private serverOrder = false;
  /** Where the next ListMembers page starts ("" for the first); null when there is none. */
  private next: string | null = null;
  /** Who left while a page was on its way (a page taken before they left must not bring them back). */
  private readonly leftMeanwhile = new Set<string>();
  private loading = 0;
  private drawPending = false;
  /** Counts resets: a page asked for before one is dropped. */
  private generation = 0;

  constructor(
    private readonly view: MembersView,
    private readonly me: () => string | undefined,
  ) {}

  /** A large room's news in brief (a crowd came or went: chatd sends the count alone): the
   * list shown stays, the count moves. */
  recount(total: number): void {
    this.total = Math.max(total, this.members.size);
    this.partial = true;
    this.serverOrder = true;
    if (this.next === null) this.next = "";
    this.changed();
  }

  /** The list `joined` gave: `total` members in all, `truncated` when the list lacks some. */
  reset(members: Member[], total = members.length, truncated = false): void {
    this.generation += 1;
    this.members.clear();
    this.leftMeanwhile.clear();
    this.loading = 0;
    for (const member of members) {
      if (this.members.size >= MEMBERS_CAP) break;
      this.members.set(member.userId, member);
    }
    this.total = Math.max(total, this.members.size);
    this.partial = truncated || this.members.size < this.total;
    this.serverOrder = this.partial;
    this.next = this.partial ? "" : null;
    this.changed();
  }

  joined(member: Member): void {
    if (this.members.has(member.userId)) {
      this.members.set(member.userId, member);
    } else {
      this.total += 1;
      if (this.members.size < MEMBERS_CAP) this.members.set(member.userId, member);
      else this.partial = true;
    }
    this.leftMeanwhile.delete(member.userId);
    this.changed();
  }

  left(member: Member): void {
    if (this.loading > 0) this.leftMeanwhile.add(member.userId);
    // In a complete list, someone not listed was never counted either.
    if (this.members.delete(member.userId) || this.partial) this.total -= 1;
    this.changed();
  }

  /** The ListMembers page token to ask for next; null when nothing more can be shown. */
  get pageToken(): string | null {
    return this.partial && this.members.size < MEMBERS_CAP ? this.next : null;
  }

  /** A request for the next page is starting; the answer goes to `addPage` with the ticket. */
  startLoading(): number {
    this.loading += 1;
    return this.generation;
  }

  /** Merges one ListMembers page (members already listed are skipped); how many were new.
   * A page asked for before the last reset is dropped. */
  addPage(ticket: number, members: Member[], nextPageToken: string, memberCount: number): number {
    if (ticket !== this.generation) return 0;
    let added = 0;
    let cut = false;
    for (const member of members) {
      if (this.members.has(member.userId) || this.leftMeanwhile.has(member.userId)) continue;
      if (this.members.size >= MEMBERS_CAP) {
        cut = true;
        break;
      }
      this.members.set(member.userId, member);
      added += 1;
    }
    // A page the cap cut short is asked for again should room be made (by someone leaving).
    if (!cut) this.next = nextPageToken === "" ? null : nextPageToken;
    this.total = Math.max(memberCount, this.members.size);
    // Through the last page and under the cap: everyone is listed (later comings and goings
    // arrive as presence events).
    if (this.next === null && this.members.size < MEMBERS_CAP) {
      this.partial = false;
      this.total = this.members.size;
    }
    this.changed();
    return added;
  }

  /** Whether the list was reset since `startLoading` gave `ticket`. */
  startedSince(ticket: number): boolean {
    return ticket !== this.generation;
  }

  /** A request started with `startLoading` ended (answered or not). */
  doneLoading(ticket: number): void {
    if (ticket !== this.generation) return;
    this.loading = Math.max(0, this.loading - 1);
    if (this.loading === 0) this.leftMeanwhile.clear();
  }

  /** Updates the counts and the button now, and the list on the next frame (presence events
   * come in bursts; a big list is drawn once per burst). */
  private changed(): void {
    this.total = Math.max(this.total, this.members.size);
    // Everyone counted is listed (the others left): nothing more to ask for.
    if (this.partial && this.members.size === this.total && this.members.size < MEMBERS_CAP) {
      this.partial = false;
    }
    if (!this.partial) this.total = this.members.size;
    const total = this.total.toLocaleString();
    this.view.count.textContent = total;
    this.view.title.textContent = `${total} ${this.total === 1 ? "member" : "members"}`;
    const lacking = this.members.size < this.total;
    this.view.summary.hidden = !lacking;
    this.view.summary.textContent = lacking
      ? `Showing ${this.members.size.toLocaleString()} of ${total}`
      : "";
    this.view.more.hidden = this.pageToken === null;
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.render();
    });
  }

  private render(): void {
    const shown = [...this.members.values()];
    if (!this.serverOrder) shown.sort((a, b) => a.displayName.localeCompare(b.displayName));
    this.view.list.replaceChildren(
      ...shown.map((member) => {
        const you = member.userId === this.me() ? " (you)" : "";
        const item = el("li", undefined, member.displayName + you);
        item.dataset.userId = member.userId;
        item.title = member.userId;
        return item;
      }),
    );
  }
}
