// One message as the page shows it: sender and time, the message it answers, its content
// (or a tombstone), its reactions, and what the reader can do with it. Changes (edits,
// deletions, reaction changes) are applied to the message and it is drawn again. User
// content only ever goes through textContent or a checked http(s) URL attribute.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  ContentType,
  type Message,
  type MessageDeleted,
  type MessageEdited,
  type ReactionChanged,
} from "./gen/chat/v1/chat_pb";
import { el, httpUrl, link, linkified } from "./dom";

/** The reactions the page offers (any reaction others add shows too). */
export const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

/** A change of a message, as a stream delivers it. */
export type Change =
  | { case: "messageEdited"; value: MessageEdited }
  | { case: "messageDeleted"; value: MessageDeleted }
  | { case: "reactionChanged"; value: ReactionChanged };

/** What the reader can do with a message; the page decides how. */
export interface MessageActions {
  reply(message: Message): void;
  react(message: Message, reaction: string, add: boolean): void;
  edit(message: Message, content: string): Promise<boolean>;
  remove(message: Message): void;
}

/** What drawing a message needs from the timeline. */
export interface Context {
  me: string | undefined;
  actions: MessageActions;
  /** The message `seq`, when shown. */
  find(seq: bigint): Message | undefined;
  /** Scrolls to the message `seq`. */
  show(seq: bigint): void;
  /** An image finished loading (the timeline may need to scroll). */
  imageLoaded(): void;
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

/** One line of a message for a quote: the sender and the start of its text. */
export function quoteLine(message: Message): string {
  const what = message.deleted
    ? "a deleted message"
    : message.contentType === ContentType.IMAGE
      ? "🖼 image"
      : message.content;
  const text = what.length > 80 ? `${what.slice(0, 80)}…` : what;
  return `${message.sender?.displayName ?? "?"}: ${text}`;
}

/** Applies `change` to `message` (once: a change at or below the message's updated_seq
 * is in it already). Returns whether it changed. */
export function applyChange(message: Message, change: Change, me: string | undefined): boolean {
  const event = change.value;
  if (event.seq <= message.updatedSeq) return false;
  message.updatedSeq = event.seq;
  switch (change.case) {
    case "messageEdited":
      message.content = change.value.content;
      message.editedAt = change.value.editedAt;
      break;
    case "messageDeleted":
      message.deleted = true;
      message.content = "";
      message.reactions = [];
      break;
    case "reactionChanged": {
      const e = change.value;
      const at = message.reactions.findIndex((r) => r.reaction === e.reaction);
      const mine = e.member?.userId === me ? e.added : at >= 0 && message.reactions[at].mine;
      if (e.count === 0) {
        if (at >= 0) message.reactions.splice(at, 1);
      } else if (at >= 0) {
        message.reactions[at].count = e.count;
        message.reactions[at].mine = mine;
      } else {
        message.reactions.push({ $typeName: "chat.v1.ReactionCount", reaction: e.reaction, count: e.count, mine });
      }
      break;
    }
  }
  return true;
}

function body(message: Message, context: Context): HTMLElement {
  const out = el("div", "body");
  if (message.deleted) {
    out.classList.add("deleted");
    out.textContent = "This message was deleted.";
    return out;
  }
  const url = httpUrl(message.content);
  if (url && message.contentType === ContentType.IMAGE) {
    const img = el("img");
    img.src = url.href;
    img.alt = `image sent by ${message.sender?.displayName ?? "someone"}`;
    img.referrerPolicy = "no-referrer";
    img.addEventListener("load", () => context.imageLoaded(), { once: true });
    const a = link(url, "");
    a.append(img);
    // An image that cannot be shown becomes its link.
    img.addEventListener("error", () => a.replaceChildren(`🖼 ${url.href}`), { once: true });
    out.append(a);
  } else if (url && message.contentType === ContentType.FILE) {
    out.append(link(url, message.content));
  } else {
    out.append(...linkified(message.content));
  }
  return out;
}

function button(className: string, text: string, title: string, onClick: () => void): HTMLButtonElement {
  const b = el("button", className, text);
  b.type = "button";
  b.title = title;
  b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

function reactions(message: Message, context: Context): HTMLElement {
  const row = el("div", "reactions");
  for (const r of message.reactions) {
    const chip = button(
      r.mine ? "chip mine" : "chip",
      `${r.reaction} ${r.count}`,
      r.mine ? `Remove your ${r.reaction}` : `React with ${r.reaction}`,
      () => context.actions.react(message, r.reaction, !r.mine),
    );
    chip.dataset.reaction = r.reaction;
    row.append(chip);
  }
  return row;
}

function actions(message: Message, context: Context, item: HTMLLIElement): HTMLElement {
  const bar = el("div", "actions");
  if (message.deleted) return bar;
  const picker = el("div", "picker");
  picker.hidden = true;
  for (const reaction of REACTIONS) {
    const held = message.reactions.some((r) => r.reaction === reaction && r.mine);
    picker.append(
      button("pick", reaction, `React with ${reaction}`, () => {
        picker.hidden = true;
        context.actions.react(message, reaction, !held);
      }),
    );
  }
  bar.append(
    button("reply", "↩", "Reply", () => context.actions.reply(message)),
    button("react", "☺", "React", () => {
      picker.hidden = !picker.hidden;
    }),
  );
  if (message.sender?.userId === context.me) {
    if (message.contentType !== ContentType.IMAGE) {
      bar.append(button("edit", "✎", "Edit", () => editInPlace(message, context, item)));
    }
    bar.append(button("delete", "🗑", "Delete", () => context.actions.remove(message)));
  }
  bar.append(picker);
  return bar;
}

/** Swaps the message's content for a form that edits it (Enter saves, Escape cancels). */
function editInPlace(message: Message, context: Context, item: HTMLLIElement): void {
  const current = item.querySelector(".body");
  if (!current) return;
  const form = el("form", "edit-form");
  const input = el("input");
  input.value = message.content;
  input.setAttribute("aria-label", "Edit your message");
  const save = el("button", undefined, "Save");
  save.type = "submit";
  const cancel = button("cancel", "Cancel", "Cancel the edit", () => form.replaceWith(current));
  form.append(input, save, cancel);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void context.actions.edit(message, input.value).then((done) => {
      if (done && form.isConnected) form.replaceWith(current);
    });
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") form.replaceWith(current);
  });
  current.replaceWith(form);
  input.focus();
}

/** The list item of `message`. */
export function renderMessage(message: Message, context: Context): HTMLLIElement {
  const item = el("li", "message");
  item.dataset.seq = message.seq.toString();
  const sender = message.sender;
  item.dataset.sender = sender?.userId ?? "";
  if (sender && sender.userId === context.me) item.classList.add("mine");
  const sent = message.sentAt ? timestampDate(message.sentAt) : undefined;
  const head = el("div", "head");
  head.append(el("span", "sender", sender?.displayName ?? "?"));
  if (sent) {
    const time = el("time", "meta", TIME.format(sent));
    time.dateTime = sent.toISOString();
    time.title = sent.toLocaleString();
    head.append(time);
  }
  if (message.editedAt && !message.deleted) {
    const edited = el("span", "meta edited", "(edited)");
    edited.title = `edited ${timestampDate(message.editedAt).toLocaleString()}`;
    head.append(edited);
  }
  if (sender) head.title = `from ${sender.userId}`;
  const bubble = el("div", "bubble");
  bubble.append(head);
  if (message.replyToSeq > 0n) {
    const quoted = context.find(message.replyToSeq);
    const seq = message.replyToSeq;
    const quote = button("quote", quoted ? quoteLine(quoted) : "an earlier message", "Show the message it answers", () =>
      context.show(seq),
    );
    quote.dataset.replyTo = seq.toString();
    bubble.append(quote);
  }
  bubble.append(body(message, context));
  if (message.reactions.length > 0) bubble.append(reactions(message, context));
  bubble.append(actions(message, context, item));
  item.append(bubble);
  return item;
}
