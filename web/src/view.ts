// Rendering: messages in seq order (each seq once), grouped by day and sender, members.
// User content only ever goes through textContent or a checked http(s) URL attribute,
// never innerHTML.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ContentType, type Member, type Message } from "./gen/chat/v1/chat_pb";

export function byId<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element as T;
}

/** The URL when `text` is an absolute http(s) URL, else null. */
export function httpUrl(text: string): URL | null {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch {
    return null;
  }
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function link(url: URL, text: string): HTMLAnchorElement {
  const a = el("a", undefined, text);
  a.href = url.href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  return a;
}

/** http(s) URLs in running text; trailing punctuation stays text. */
const URL_IN_TEXT = /https?:\/\/[^\s<>"']+/g;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/** Text with its http(s) URLs as links. */
export function linkified(text: string): Node[] {
  const nodes: Node[] = [];
  let from = 0;
  for (const match of text.matchAll(URL_IN_TEXT)) {
    const raw = match[0].replace(TRAILING, "");
    const url = httpUrl(raw);
    const at = match.index ?? 0;
    if (!url) continue;
    if (at > from) nodes.push(document.createTextNode(text.slice(from, at)));
    nodes.push(link(url, raw));
    from = at + raw.length;
  }
  if (from < text.length) nodes.push(document.createTextNode(text.slice(from)));
  return nodes;
}

function messageBody(message: Message, onImage: () => void): HTMLElement {
  const url = httpUrl(message.content);
  const body = el("div", "body");
  if (url && message.contentType === ContentType.IMAGE) {
    const img = el("img");
    img.src = url.href;
    img.alt = `image sent by ${message.sender?.displayName ?? "someone"}`;
    img.referrerPolicy = "no-referrer";
    img.addEventListener("load", onImage, { once: true });
    const a = link(url, "");
    a.append(img);
    // An image that cannot be shown becomes its link.
    img.addEventListener("error", () => a.replaceChildren(`🖼 ${url.href}`), { once: true });
    body.append(a);
  } else if (url && message.contentType === ContentType.FILE) {
    body.append(link(url, message.content));
  } else {
    body.append(...linkified(message.content));
  }
  return body;
}

const DAY = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

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
  private readonly items = new Map<bigint, HTMLLIElement>();
  /** Whether the reader is at the newest message: new content keeps it in view. */
  private pinned = true;

  constructor(
    private readonly list: HTMLOListElement,
    private readonly scroller: HTMLElement,
    private readonly me: () => string | undefined,
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
  }

  get oldestSeq(): bigint | undefined {
    const first = this.list.firstElementChild as HTMLLIElement | null;
    return first ? BigInt(first.dataset.seq ?? "0") : undefined;
  }

  get newestSeq(): bigint | undefined {
    const last = this.list.lastElementChild as HTMLLIElement | null;
    return last ? BigInt(last.dataset.seq ?? "0") : undefined;
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

  private insert(message: Message): void {
    if (this.items.has(message.seq)) return;
    const item = this.render(message);
    // Live messages come last: look for the place from the end.
    let after = this.list.lastElementChild as HTMLLIElement | null;
    while (after && BigInt(after.dataset.seq ?? "0") > message.seq) {
      after = after.previousElementSibling as HTMLLIElement | null;
    }
    if (after) after.after(item);
    else this.list.prepend(item);
    this.items.set(message.seq, item);
    group(item);
    const next = item.nextElementSibling as HTMLLIElement | null;
    if (next) group(next);
  }

  private render(message: Message): HTMLLIElement {
    const item = el("li", "message");
    item.dataset.seq = message.seq.toString();
    const sender = message.sender;
    item.dataset.sender = sender?.userId ?? "";
    if (sender && sender.userId === this.me()) item.classList.add("mine");
    const sent = message.sentAt ? timestampDate(message.sentAt) : undefined;
    if (sent) {
      item.dataset.time = String(sent.getTime());
      item.dataset.day = dayLabel(sent);
    }
    const head = el("div", "head");
    head.append(el("span", "sender", sender?.displayName ?? "?"));
    if (sent) {
      const time = el("time", "meta", TIME.format(sent));
      time.dateTime = sent.toISOString();
      time.title = sent.toLocaleString();
      head.append(time);
    }
    if (sender) head.title = `from ${sender.userId}`;
    const onImage = () => {
      if (this.pinned) this.scrollToNewest();
    };
    const bubble = el("div", "bubble");
    bubble.append(head, messageBody(message, onImage));
    item.append(bubble);
    return item;
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
