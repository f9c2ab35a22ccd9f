// chatd's chat page: sign in with a token, choose a room, see who is there, send text and
// image links, watch messages live, scroll back through history, and pick up after a
// reload or a dropped connection with nothing missed.

import { Code, ConnectError } from "@connectrpc/connect";
import { chatClient } from "./client";
import { ContentType } from "./gen/chat/v1/chat_pb";
import { RoomSession, storedSeq } from "./room";
import {
  adoptTokenFromFragment,
  currentToken,
  forgetToken,
  setToken,
  tokenUser,
} from "./token";
import { Members, Timeline, byId, httpUrl } from "./view";

const ROOM_KEY = "chatd.room";
const PAGE_SIZE = 50;

adoptTokenFromFragment();
const client = chatClient(currentToken);

const errorBox = byId<HTMLParagraphElement>("error");
const connection = byId<HTMLSpanElement>("connection");
const roomInput = byId<HTMLInputElement>("room-input");
const messageInput = byId<HTMLInputElement>("message-input");
const contentType = byId<HTMLSelectElement>("content-type");
const olderButton = byId<HTMLButtonElement>("older");
const timeline = new Timeline(byId("messages"), byId("timeline"));
const members = new Members(byId("members"), () => {
  const token = currentToken();
  return token ? tokenUser(token)?.userId : undefined;
});

let session: RoomSession | null = null;

function showError(text: string): void {
  errorBox.textContent = text;
  errorBox.hidden = false;
}

function clearError(): void {
  errorBox.textContent = "";
  errorBox.hidden = true;
}

/** The server's own words, with the status for context. */
function describe(error: unknown): string {
  const e = ConnectError.from(error);
  if (e.code === Code.Unknown && e.rawMessage.includes("fetch")) {
    return "cannot reach chatd (is it running?)";
  }
  return `${e.rawMessage || "request failed"} (${Code[e.code]})`;
}

function showSignedIn(): void {
  const token = currentToken();
  const user = token ? tokenUser(token) : null;
  byId("sign-in").hidden = token !== null;
  byId("chat").hidden = token === null;
  byId("sign-out").hidden = token === null;
  byId("whoami").textContent = user
    ? `signed in as ${user.name} (${user.userId})` +
      (user.expiresAt ? `, token valid until ${user.expiresAt.toLocaleString()}` : "")
    : "";
}

function setConnection(state: string, detail?: string): void {
  connection.dataset.state = state;
  connection.textContent = detail ? `${state}: ${detail}` : state;
}

function leaveRoom(): void {
  session?.close();
  session = null;
  timeline.clear();
  members.reset([]);
  olderButton.hidden = true;
  byId("room-view").hidden = true;
  setConnection("idle");
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
    for (const message of page.messages) timeline.add(message);
    olderButton.hidden = !page.hasMore;
  } catch (e) {
    showError(`Cannot load history: ${describe(e)}`);
  }
}

function joinRoom(room: string): void {
  leaveRoom();
  clearError();
  sessionStorage.setItem(ROOM_KEY, room);
  roomInput.value = room;
  const current = new RoomSession(client, room, {
    joined(name, list, firstJoin) {
      byId("room-name").textContent = name;
      byId("room-view").hidden = false;
      members.reset(list);
      // Once per session: the history up to where the stream starts, for context.
      const upTo = current.shownUpTo;
      if (firstJoin && upTo !== undefined) void loadOlder(room, upTo + 1n);
    },
    message: (message) => timeline.add(message),
    memberJoined: (member) => members.joined(member),
    memberLeft: (member) => members.left(member),
    connection: (state, detail) => setConnection(state, detail),
    failed(error) {
      setConnection("idle");
      byId("room-view").hidden = true;
      sessionStorage.removeItem(ROOM_KEY);
      if (error.code === Code.Unauthenticated) {
        forgetToken();
        showSignedIn();
        showError(`Your token was refused: ${error.rawMessage}. Paste a new one.`);
      } else {
        showError(`Cannot join "${room}": ${error.rawMessage} (${Code[error.code]})`);
      }
    },
  });
  session = current;
  void current.run();
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
    });
    clearError();
    messageInput.value = "";
    contentType.value = "text";
  } catch (e) {
    showError(`Not sent: ${describe(e)}`);
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

byId<HTMLFormElement>("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  joinRoom(roomInput.value.trim().toLowerCase());
});

byId<HTMLFormElement>("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void send();
});

olderButton.addEventListener("click", () => {
  const room = session?.room;
  const oldest = timeline.oldestSeq ?? (room ? storedSeq(room) : undefined);
  if (room && oldest !== undefined) void loadOlder(room, oldest);
});

showSignedIn();
const remembered = sessionStorage.getItem(ROOM_KEY);
if (currentToken() && remembered) joinRoom(remembered);
