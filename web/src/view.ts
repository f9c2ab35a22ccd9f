// Rendering: messages in seq order (each seq once), members, errors. User content only
// ever goes through textContent or a checked http(s) URL attribute, never innerHTML.

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

function el<K extends keyof HTMLElementTagNameMap>(
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

function messageBody(message: Message): Node {
  const url = httpUrl(message.content);
  if (url && message.contentType === ContentType.IMAGE) {
    const img = el("img");
    img.src = url.href;
    img.alt = `image sent by ${message.sender?.displayName ?? "someone"}`;
    img.referrerPolicy = "no-referrer";
    img.loading = "lazy";
    const a = link(url, "");
    a.append(img);
    return a;
  }
  if (url && message.contentType === ContentType.FILE) return link(url, message.content);
  return el("span", "content", message.content);
}

/** The message list: one item per seq, kept in seq order. */
export class Timeline {
  private readonly items = new Map<bigint, HTMLLIElement>();

  constructor(
    private readonly list: HTMLOListElement,
    private readonly scroller: HTMLElement,
  ) {}

  clear(): void {
    this.items.clear();
    this.list.replaceChildren();
  }

  get oldestSeq(): bigint | undefined {
    const first = this.list.firstElementChild as HTMLLIElement | null;
    return first ? BigInt(first.dataset.seq ?? "0") : undefined;
  }

  /** Adds a message unless its seq is shown already. */
  add(message: Message): void {
    if (this.items.has(message.seq)) return;
    const atBottom =
      this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
    const item = el("li");
    item.dataset.seq = message.seq.toString();
    const sent = message.sentAt ? timestampDate(message.sentAt) : undefined;
    item.append(
      el("span", "meta", `#${message.seq}${sent ? " · " + sent.toLocaleTimeString() : ""}`),
      el("span", "sender", message.sender?.displayName ?? "?"),
      messageBody(message),
    );
    if (message.sender) item.title = `from ${message.sender.userId}`;
    // Live messages come last: look for the place from the end.
    let after: HTMLLIElement | null = this.list.lastElementChild as HTMLLIElement | null;
    while (after && BigInt(after.dataset.seq ?? "0") > message.seq) {
      after = after.previousElementSibling as HTMLLIElement | null;
    }
    if (after) after.after(item);
    else this.list.prepend(item);
    this.items.set(message.seq, item);
    if (atBottom && item === this.list.lastElementChild) {
      this.scroller.scrollTop = this.scroller.scrollHeight;
    }
  }
}

/** The member list, by user id. */
export class Members {
  private readonly members = new Map<string, Member>();

  constructor(
    private readonly list: HTMLUListElement,
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
