// What went wrong, in the words of a person using the page; the server's own message stays
// available to developers in the banner's title and in the console.

import { Code, ConnectError } from "@connectrpc/connect";

/** The server's rule for room names, checked before a join so that a typo gets a plain answer. */
const ROOM_NAME = /^[a-z0-9][a-z0-9._:-]{0,63}$/;

export const ROOM_RULE =
  "Room names are up to 64 characters: lowercase letters, digits and . _ : - , starting with a letter or digit.";

/** The room's normal form (trimmed, lowercased), or null when the server would refuse it. */
export function roomName(typed: string): string | null {
  const room = typed.trim().toLowerCase();
  return ROOM_NAME.test(room) ? room : null;
}

/** The field a refusal names ("room: must match …" names `room`). */
function field(message: string): string | undefined {
  return /^([a-z_]+):/.exec(message)?.[1];
}

/**
 * A ban or a mute as the server states it ("you are banned from room lobby until
 * 2026-12-07T10:00:00Z: spam", "you are muted in every room until lifted"), in plain words
 * with the time in the reader's own zone; null for any other refusal.
 */
export function sanctionWords(raw: string): string | null {
  const said = /^you are (banned from|muted in) (room \S+|every room) until (lifted|\S+?)(?:: ([\s\S]*))?$/.exec(
    raw,
  );
  if (!said) return null;
  const [, what, where, until, reason] = said;
  const at = new Date(until);
  const when =
    until === "lifted"
      ? "until an administrator lifts it"
      : Number.isNaN(at.getTime())
        ? `until ${until}`
        : `until ${at.toLocaleString()}`;
  const why = reason ? ` Reason: ${reason}` : "";
  return `You are ${what} ${where} ${when}.${why}`;
}

/** A sentence for `error`. */
export function plainWords(error: unknown): string {
  const e = ConnectError.from(error);
  const raw = e.rawMessage;
  switch (e.code) {
    case Code.Unavailable:
      return "The chat server is not answering right now. Check your connection; it will be retried.";
    case Code.Unknown:
    case Code.Internal:
      if (/fetch|network/i.test(raw)) {
        return "Cannot reach the chat server. Check your connection and try again.";
      }
      return "Something went wrong on the server. Try again in a moment.";
    case Code.DeadlineExceeded:
      return "The server took too long to answer. Try again.";
    case Code.ResourceExhausted:
      return "You are doing that too fast. Wait a moment and try again.";
    case Code.PermissionDenied:
      return sanctionWords(raw) ?? "You do not have access to this room.";
    case Code.NotFound:
      return "That room does not exist (yet).";
    case Code.Unauthenticated:
      return "Your sign-in was refused or has expired. Paste a new token.";
    case Code.InvalidArgument:
      switch (field(raw)) {
        case "room":
          return ROOM_RULE;
        case "content":
          if (/URL/.test(raw)) return "That link is not valid: use a full http:// or https:// address.";
          return /bytes|long|at most/.test(raw)
            ? "That message is too long."
            : "That message cannot be sent as it is (empty, or not valid text).";
        default:
          return "That was not accepted. Check what you typed and try again.";
      }
    default:
      return "That did not work. Try again in a moment.";
  }
}

/** The developer's detail: code and the server's message. */
export function detail(error: unknown): string {
  const e = ConnectError.from(error);
  return `${Code[e.code]}: ${e.rawMessage}`;
}
