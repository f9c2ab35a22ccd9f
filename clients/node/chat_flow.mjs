// chatd from Node with @grpc/grpc-js: two users join a room, see each other, exchange
// messages, read history, one resumes after a cut with exactly the messages it missed, and
// they reply, edit, react and delete.
// Needs CHATD_ADDR, ALICE_TOKEN and BOB_TOKEN (.ci/with-chatd sets them). Exits non-zero on
// any failure; every wait has a timeout.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const STEP_MS = 10_000;
const protoDir = fileURLToPath(new URL("../../proto", import.meta.url));

const definition = protoLoader.loadSync("chat/v1/chat.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { ChatService } = grpc.loadPackageDefinition(definition).chat.v1;

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through .ci/with-chatd)`);
  return value;
}

/** A client whose calls carry `authorization: Bearer <token>`. */
function connect(token) {
  const client = new ChatService(env("CHATD_ADDR"), grpc.credentials.createInsecure());
  const metadata = () => {
    const m = new grpc.Metadata();
    m.set("authorization", `Bearer ${token}`);
    return m;
  };
  const unary = (method, request) =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + STEP_MS);
      client[method](request, metadata(), { deadline }, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
    });
  return {
    close: () => client.close(),
    send: (room, content) =>
      unary("SendMessage", { room, content }).then((reply) => reply.message),
    history: (room) => unary("ListHistory", { room }),
    members: (room) => unary("ListMembers", { room }),
    sendRaw: (request) => unary("SendMessage", request),
    edit: (room, message_seq, content) =>
      unary("EditMessage", { room, message_seq, content }).then((reply) => reply.message),
    delete: (room, message_seq) =>
      unary("DeleteMessage", { room, message_seq }).then((reply) => reply.message),
    react: (room, message_seq, reaction, add) =>
      unary("React", { room, message_seq, reaction, add }).then((reply) => reply.message),
    join: (room, resumeAfterSeq) => new Events(client.JoinRoom(
      resumeAfterSeq === undefined ? { room } : { room, resume_after_seq: resumeAfterSeq },
      metadata(),
    )),
  };
}

/** A JoinRoom stream read one event at a time, each wait bounded by STEP_MS. */
class Events {
  constructor(call) {
    this.call = call;
    this.queue = [];
    this.waiters = [];
    this.ended = null;
    call.on("data", (event) => this.push({ event }));
    call.on("error", (error) => this.push({ error }));
    call.on("end", () => this.push({ error: new Error("stream ended") }));
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.queue.push(item);
  }

  /** The next event, which must be `what`. Typing and read markers (live-only events
   * that come whenever someone types or reads) are skipped unless asked for. */
  async next(what) {
    for (;;) {
      const event = await this.any(what);
      if (event.event === what || !LIVE_ONLY.has(event.event)) return this.check(event, what);
    }
  }

  async any(what) {
    const item = this.queue.shift() ?? await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${STEP_MS} ms`)), STEP_MS);
      this.waiters.push((it) => { clearTimeout(timer); resolve(it); });
    });
    if (item.error) throw new Error(`waiting for ${what}: ${item.error.message}`);
    return item.event;
  }

  check(event, what) {
    assert.equal(event.event, what, `expected ${what}, got ${JSON.stringify(event)}`);
    return event[what];
  }

  cancel() {
    this.call.cancel();
  }
}

const ids = (members) => members.map((m) => m.user_id).sort();
const LIVE_ONLY = new Set(["typing", "read_marker"]);

async function main() {
  const alice = connect(env("ALICE_TOKEN"));
  const bob = connect(env("BOB_TOKEN"));
  const room = `node-${Date.now().toString(36)}`;

  // Join and presence.
  const a = alice.join(room);
  const aJoined = await a.next("joined");
  assert.deepEqual(ids(aJoined.members), ["alice"]);
  assert.equal(aJoined.last_seq, 0);
  let b = bob.join(room);
  // The caller first, then the others; the count is the room's.
  const bJoined = await b.next("joined");
  assert.deepEqual(bJoined.members.map((m) => m.user_id), ["bob", "alice"]);
  assert.equal(bJoined.member_count, 2);
  assert.equal((await a.next("member_joined")).member.display_name, "Bob");

  // Send and receive live, both ways.
  const first = await alice.send(room, "hello from alice");
  assert.equal(first.seq, 1);
  assert.equal(first.sender.user_id, "alice");
  for (const stream of [a, b]) assert.equal((await stream.next("message")).content, "hello from alice");
  assert.equal((await bob.send(room, "hi alice")).seq, 2);
  for (const stream of [a, b]) assert.equal((await stream.next("message")).seq, 2);

  // History and members.
  const history = await alice.history(room);
  assert.deepEqual(history.messages.map((m) => [m.seq, m.content]), [[1, "hello from alice"], [2, "hi alice"]]);
  assert.deepEqual(ids((await bob.members(room)).members), ["alice", "bob"]);

  // A cut: bob's stream ends, alice sends while he is away, he resumes after seq 2.
  b.cancel();
  assert.equal((await a.next("member_left")).member.user_id, "bob");
  await alice.send(room, "while bob was away 1");
  await alice.send(room, "while bob was away 2");
  b = bob.join(room, 2);
  assert.equal((await b.next("joined")).last_seq, 4);
  assert.equal((await b.next("message")).content, "while bob was away 1");
  assert.equal((await b.next("message")).content, "while bob was away 2");
  await alice.send(room, "welcome back");
  // The next message after the replay is the live one: nothing missed, nothing twice.
  const live = await b.next("message");
  assert.deepEqual([live.seq, live.content], [5, "welcome back"]);

  // Messages that live: a reply, an edit, a reaction and a deletion, each an event with
  // the room's next seq, in order on the stream.
  const reply = (await bob.sendRaw({ room, content: "thanks!", reply_to_seq: 5 })).message;
  assert.deepEqual([reply.seq, reply.reply_to_seq], [6, 5]);
  assert.equal((await b.next("message")).reply_to_seq, 5);
  const edited = await alice.edit(room, 5, "welcome back, bob");
  assert.deepEqual([edited.content, edited.updated_seq], ["welcome back, bob", 7]);
  const edit = await b.next("message_edited");
  assert.deepEqual([edit.seq, edit.message_seq, edit.content], [7, 5, "welcome back, bob"]);
  const reacted = await bob.react(room, 5, "👍", true);
  assert.deepEqual(reacted.reactions.map((r) => [r.reaction, r.count, r.mine]), [["👍", 1, true]]);
  const reaction = await b.next("reaction_changed");
  assert.deepEqual([reaction.seq, reaction.reaction, reaction.count, reaction.added], [8, "👍", 1, true]);
  const tombstone = await bob.delete(room, 6);
  assert.deepEqual([tombstone.deleted, tombstone.content], [true, ""]);
  const deleted = await b.next("message_deleted");
  assert.deepEqual([deleted.seq, deleted.message_seq], [9, 6]);
  // Only the sender edits.
  await assert.rejects(bob.edit(room, 5, "mine now"), (err) => {
    assert.equal(err.code, grpc.status.PERMISSION_DENIED);
    return true;
  });

  // A bad room name is refused, naming the field.
  await assert.rejects(alice.sendRaw({ room: "Not a room!", content: "x" }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /^room: /);
    return true;
  });

  a.cancel();
  b.cancel();
  alice.close();
  bob.close();
}

try {
  await main();
  console.log("node client: two-user flow passed (join, presence, send, receive, history, resume, reply, edit, react, delete)");
} catch (error) {
  console.error("node client: FAILED:", error);
  process.exit(1);
}
