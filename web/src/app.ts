// chatd's chat page: sign in with a token, see your rooms with unread counts, open one, see
// who is there, send text and image links, watch messages live, scroll back through
// history, and pick up after a reload or a dropped connection with nothing missed.

import { Code, ConnectError } from "@connectrpc/connect";
import { chatClient } from "./client";
import { detail, plainWords, roomName, ROOM_RULE } from "./errors";
import { ContentType, type Message } from "./gen/chat/v1/chat_pb";
import { RoomSession, storedSeq } from "./room";
import { RoomList } from "./rooms";
import {
  adoptTokenFromFragment,
  currentToken,
  forgetToken,
  setToken,
  tokenUser,
} from "./token";
import { byId, httpUrl } from "./dom";
import { quoteLine } from "./message";
import { Markers, SEEN_BY_MEMBERS, TypingLine, TypingSender } from "./presence";
import { Members, Timeline } from "./view";

const ROOM_KEY = "chatd.room";
const PAGE_SIZE = 50;
/** Members per ListMembers page ("Show more"). */
const MEMBERS_PAGE_SIZE = 100;
/** A read marker is sent at most this often while messages arrive. */
const MARK_READ_DELAY_MS = 500;

adoptTokenFromFragment();
const client = chatClient(currentToken);
const me = () => {
  const token = currentToken();
  return token ? tokenUser(token)?.userId : undefined;
};

const errorBox = byId<HTMLDivElement>("error");
const errorText = byId<HTMLSpanElement>("error-text");
const connection = byId<HTMLSpanElement>("connection");
const roomInput = byId<HTMLInputElement>("room-input");
const sendForm = byId<HTMLFormElement>("send-form");
const messageInput = byId<HTMLInputElement>("message-input");
const contentType = byId<HTMLSelectElement>("content-type");
const olderButton = byId<HTMLButtonElement>("older");
const roomView = byId<HTMLElement>("room-view");
const membersPane = byId<HTMLElement>("members-pane");
const membersToggle = byId<HTMLButtonElement>("members-toggle");
const replyBar = byId<HTMLDivElement>("reply-bar");
/** The message the next send answers, if any. */
let replyTo: Message | null = null;

function setReply(message: Message | null): void {
  replyTo = message;
  replyBar.hidden = message === null;
  byId("reply-quote").textContent = message ? quoteLine(message) : "";
  if (message) messageInput.focus();
}

/** Runs a change call; the answer is shown at once (the stream brings the same change). */
async function changeCall(what: string, call: () => Promise<{ message?: Message }>): Promise<boolean> {
  try {
    const answer = await call();
    if (answer.message) timeline.update(answer.message);
    clearError();
    return true;
  } catch (e) {
    showError(`Could not ${what}. ${plainWords(e)}`, detail(e));
    return false;
  }
}

const timeline = new Timeline(byId("messages"), byId("timeline"), me, {
  reply: setReply,
  react: (message, reaction, add) =>
    void changeCall(add ? "react" : "remove the reaction", () =>
      client.react({ room: message.room, messageSeq: message.seq, reaction, add }),
    ),
  edit: (message, content) =>
    changeCall("save the edit", () =>
      client.editMessage({ room: message.room, messageSeq: message.seq, content }),
    ),
  remove: (message) => {
    if (!confirm("Delete this message for everyone?")) return;
    void changeCall("delete the message", () =>
      client.deleteMessage({ room: message.room, messageSeq: message.seq }),
    );
  },
});
const moreMembers = byId<HTMLButtonElement>("members-more");
const members = new Members(
  {
    list: byId("members"),
    count: byId("member-count"),
    title: byId("members-title"),
    summary: byId("members-summary"),
    more: moreMembers,
  },
  me,
);
const rooms = new RoomList(client, byId("rooms"), byId("rooms-empty"), (room) => joinRoom(room), (e) => {
  // The list is refreshed in the background: only a refused token is worth a banner.
  if (ConnectError.from(e).code === Code.Unauthenticated) tokenRefused(ConnectError.from(e));
});

let session: RoomSession | null = null;
const typingLine = new TypingLine(byId("typing"));
const typingSender = new TypingSender(client, () => session?.room);
const markers = new Markers();

/** "Seen by …" under the reader's newest message, from everyone's read markers. */
function updateSeen(): void {
  const user = me();
  const mine = user ? timeline.newestFrom(user) : undefined;
  timeline.showSeen(mine?.seq, mine ? markers.seenBy(mine.seq, user) : []);
}

function showError(text: string, developerDetail?: string): void {
  errorText.textContent = text;
  errorBox.title = developerDetail ?? "";
  errorBox.hidden = false;
  if (developerDetail) console.warn(`chatd: ${developerDetail}`);
}

function clearError(): void {
  errorText.textContent = "";
  errorBox.hidden = true;
}

function showSignedIn(): void {
  const token = currentToken();
  const user = token ? tokenUser(token) : null;
  byId("sign-in").hidden = token !== null;
  byId("chat").hidden = token === null;
  byId("sign-out").hidden = token === null;
  const whoami = byId("whoami");
  whoami.textContent = user ? `${user.name} (${user.userId})` : "";
  whoami.title = user?.expiresAt ? `token valid until ${user.expiresAt.toLocaleString()}` : "";
  if (token) rooms.start();
  else rooms.stop();
}

function setConnection(state: string, text?: string): void {
  connection.dataset.state = state;
  connection.textContent = text ?? (state === "live" ? "connected" : state === "idle" ? "" : state);
  // While the stream is down nobody's arrivals or departures reach the page.
  const stale = state === "reconnecting";
  membersPane.classList.toggle("stale", stale);
  byId("members-state").hidden = !stale;
}

function setComposer(enabled: boolean): void {
  for (const control of sendForm.querySelectorAll<HTMLInputElement | HTMLButtonElement>("input, button, select")) {
    control.disabled = !enabled;
  }
}

function leaveRoom(): void {
  flushSeen();
  setReply(null);
  typingSender.stop();
  typingLine.clear();
  markers.clear();
  session?.close();
  session = null;
  timeline.clear();
  members.reset([]);
  olderButton.hidden = true;
  roomView.hidden = true;
  byId("no-room").hidden = false;
  byId("back").hidden = true;
  document.body.classList.remove("in-room");
  setComposer(false);
  rooms.select(null);
  setConnection("idle");
}

function tokenRefused(error: ConnectError): void {
  leaveRoom();
  forgetToken();
  sessionStorage.removeItem(ROOM_KEY);
  showSignedIn();
  showError(plainWords(error), detail(error));
}

let markTimer: ReturnType<typeof setTimeout> | null = null;

/** Marks the open room read up to the newest message soon, when the reader can see it. */
function markSeen(): void {
  if (markTimer !== null || !session) return;
  markTimer = setTimeout(flushSeen, MARK_READ_DELAY_MS);
}

/** Marks the open room read now (a pending mark is not lost when the room is left). */
function flushSeen(): void {
  if (markTimer !== null) clearTimeout(markTimer);
  markTimer = null;
  const newest = timeline.newestSeq;
  if (session && newest !== undefined && timeline.readingNewest && document.visibilityState === "visible") {
    void rooms.markRead(session.room, newest);
  }
}

/** Loads the page of history just below `before` (a seq) and shows it. */
async function loadOlder(room: string, before: bigint): Promise<void> {
  if (before <= 1n) {
    olderButton.hidden = true;
    return;
  }
  try {
    const page = await client.listHistory({ room, pageSize: PAGE_SIZE, beforeSeq: before });
    if (session?.room !== room) return;
    timeline.addOlder(page.messages, () => {
      olderButton.hidden = !page.hasMore;
    });
    markSeen();
  } catch (e) {
    showError(`Older messages could not be loaded. ${plainWords(e)}`, detail(e));
  }
}

function joinRoom(typed: string): void {
  const room = roomName(typed);
  if (room === null) {
    showError(ROOM_RULE);
    return;
  }
  leaveRoom();
  clearError();
  sessionStorage.setItem(ROOM_KEY, room);
  roomInput.value = "";
  byId("room-name").textContent = room;
  roomView.hidden = false;
  byId("no-room").hidden = true;
  byId("back").hidden = false;
  document.body.classList.add("in-room");
  rooms.select(room);
  const current = new RoomSession(client, room, {
    joined(joined, firstJoin) {
      byId("room-name").textContent = joined.room;
      setComposer(true);
      // In a room of over 500, a burst of arrivals comes as a joined with the caller alone
      // and the count: the list on screen stays.
      if (!firstJoin && joined.membersTruncated && joined.members.length <= 1) {
        members.recount(joined.memberCount);
      } else {
        members.reset(joined.members, joined.memberCount, joined.membersTruncated);
      }
      // Read markers come only in small rooms; the first page says where everyone is.
      if (firstJoin && Math.max(joined.memberCount, joined.members.length) <= SEEN_BY_MEMBERS) {
        markers
          .load(client, room)
          .then(() => {
            if (session === current) updateSeen();
          })
          .catch(() => {});
      }
      // Once per session: the history up to where the stream starts, for context.
      const upTo = current.shownUpTo;
      if (firstJoin && upTo !== undefined) void loadOlder(room, upTo + 1n);
      markSeen();
    },
    changed: (change) => timeline.apply(change),
    typing: (member, typing) => typingLine.set(member, typing),
    readMarker(member, seq) {
      markers.set(member, seq);
      updateSeen();
    },
    message(message) {
      timeline.add(message);
      rooms.saw(room, message);
      if (message.sender) typingLine.set(message.sender, false);
      updateSeen();
      markSeen();
    },
    memberJoined: (member) => members.joined(member),
    memberLeft: (member) => members.left(member),
    connection: (state, text) => setConnection(state, text),
    failed(error) {
      sessionStorage.removeItem(ROOM_KEY);
      if (error.code === Code.Unauthenticated) {
        tokenRefused(error);
        return;
      }
      leaveRoom();
      showError(`You cannot open "${room}". ${plainWords(error)}`, detail(error));
    },
  });
  session = current;
  void current.run();
}

/** "Show more" members: the next ListMembers page, merged into the list. The first pages
 * after a truncated `joined` repeat members it listed: pages are fetched until one adds
 * someone, or there are no more. */
async function showMoreMembers(): Promise<void> {
  const current = session;
  if (!current || moreMembers.disabled) return;
  moreMembers.disabled = true;
  const ticket = members.startLoading();
  try {
    let added = 0;
    let pageToken = members.pageToken;
    while (added === 0 && pageToken !== null) {
      const page = await client.listMembers({ room: current.room, pageSize: MEMBERS_PAGE_SIZE, pageToken });
      if (session !== current) return;
      added += members.addPage(ticket, page.members, page.nextPageToken, page.memberCount);
      // A rejoin in the meantime started the list afresh: stop here.
      if (members.startedSince(ticket)) return;
      pageToken = members.pageToken;
    }
  } catch (e) {
    if (session === current) showError(`More members could not be loaded. ${plainWords(e)}`, detail(e));
  } finally {
    members.doneLoading(ticket);
    moreMembers.disabled = false;
  }
}

async function send(): Promise<void> {
  if (!session) return;
  const content = messageInput.value;
  const image = contentType.value === "image";
  if (image && !httpUrl(content.trim())) {
    showError("An image must be an http:// or https:// URL.");
    return;
  }
  try {
    await client.sendMessage({
      room: session.room,
      content: image ? content.trim() : content,
      contentType: image ? ContentType.IMAGE : ContentType.TEXT,
      clientMessageId: crypto.randomUUID(),
      replyToSeq: replyTo?.seq ?? 0n,
    });
    clearError();
    setReply(null);
    typingSender.sent();
    messageInput.value = "";
    contentType.value = "text";
    timeline.scrollToNewest();
  } catch (e) {
    showError(`Not sent. ${plainWords(e)}`, detail(e));
  }
}

byId<HTMLFormElement>("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = byId<HTMLInputElement>("token-input");
  const token = input.value.trim();
  if (!tokenUser(token)) {
    showError("That is not a token: paste the whole output of `chatd token <user-id>`.");
    return;
  }
  setToken(token);
  input.value = "";
  clearError();
  showSignedIn();
  const room = sessionStorage.getItem(ROOM_KEY);
  if (room) joinRoom(room);
});

byId("sign-out").addEventListener("click", () => {
  leaveRoom();
  forgetToken();
  sessionStorage.removeItem(ROOM_KEY);
  showSignedIn();
});

byId("back").addEventListener("click", () => {
  sessionStorage.removeItem(ROOM_KEY);
  leaveRoom();
  void rooms.refresh();
});

byId("error-close").addEventListener("click", clearError);
byId("reply-cancel").addEventListener("click", () => setReply(null));

membersToggle.addEventListener("click", () => {
  const open = roomView.classList.toggle("show-members");
  membersToggle.setAttribute("aria-expanded", String(open));
});

byId<HTMLFormElement>("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  joinRoom(roomInput.value);
});

messageInput.addEventListener("input", () => typingSender.input(messageInput.value));

sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  void send();
});

moreMembers.addEventListener("click", () => void showMoreMembers());

olderButton.addEventListener("click", () => {
  const room = session?.room;
  const oldest = timeline.oldestSeq ?? (room ? storedSeq(room) : undefined);
  if (room && oldest !== undefined) void loadOlder(room, oldest);
});

byId("timeline").addEventListener("scroll", markSeen, { passive: true });
document.addEventListener("visibilitychange", markSeen);

setComposer(false);
showSignedIn();
const remembered = sessionStorage.getItem(ROOM_KEY);
if (currentToken() && remembered) joinRoom(remembered);
