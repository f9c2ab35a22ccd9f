"""chatd from Python with grpcio: two users join a room, see each other, exchange
messages, read history, one resumes after a cut with exactly the messages it missed, and
they reply, edit, react and delete.

The stubs are generated from proto/chat/v1/chat.proto at run time (grpcio-tools) into
a temporary directory. Needs CHATD_ADDR, ALICE_TOKEN and BOB_TOKEN (.ci/with-chatd sets
them). Exits non-zero on any failure; every wait has a timeout.
"""

import asyncio
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_tools import protoc

STEP = 10.0  # seconds any one step may take
PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
LIVE_ONLY = {"typing", "read_marker"}


def generate_stubs(out: str) -> None:
    """Writes chat/v1/chat_pb2.py and chat_pb2_grpc.py under `out`."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "chat/v1/chat.proto",
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    sys.path.insert(0, out)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set (run through .ci/with-chatd)")
    return value


class Stream:
    """A JoinRoom stream read one event at a time, each wait bounded by STEP."""

    def __init__(self, call):
        self.call = call

    async def next(self, what: str):
        """The next event, which must be `what`. Typing and read markers (live-only
        events that come whenever someone types or reads) are skipped unless asked for."""
        while True:
            response = await asyncio.wait_for(self.call.read(), STEP)
            if response is grpc.aio.EOF:
                raise AssertionError(f"stream ended while waiting for {what}")
            kind = response.WhichOneof("event")
            if kind != what and kind in LIVE_ONLY:
                continue
            if kind != what:
                raise AssertionError(f"expected {what}, got {kind}: {response}")
            return getattr(response, what)

    def cancel(self) -> None:
        self.call.cancel()


def ids(members) -> list:
    return sorted(m.user_id for m in members)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def flow(pb, pb_grpc) -> None:
    channel = grpc.aio.insecure_channel(env("CHATD_ADDR"))
    chat = pb_grpc.ChatServiceStub(channel)
    alice = (("authorization", f"Bearer {env('ALICE_TOKEN')}"),)
    bob = (("authorization", f"Bearer {env('BOB_TOKEN')}"),)
    room = f"py-{int(time.time() * 1000):x}"

    async def send(who, content: str):
        reply = await chat.SendMessage(
            pb.SendMessageRequest(room=room, content=content), metadata=who, timeout=STEP
        )
        return reply.message

    def join(who, resume_after_seq=None) -> Stream:
        request = pb.JoinRoomRequest(room=room)
        if resume_after_seq is not None:
            request.resume_after_seq = resume_after_seq
        return Stream(chat.JoinRoom(request, metadata=who))

    # Join and presence.
    a = join(alice)
    joined = await a.next("joined")
    check(ids(joined.members) == ["alice"] and joined.last_seq == 0, f"alice joined: {joined}")
    b = join(bob)
    bob_joined = await b.next("joined")
    listed = [m.user_id for m in bob_joined.members]
    check(listed == ["bob", "alice"] and bob_joined.member_count == 2, f"bob sees alice: {bob_joined}")
    check((await a.next("member_joined")).member.display_name == "Bob", "alice sees bob arrive")

    # Send and receive live, both ways.
    first = await send(alice, "hello from alice")
    check(first.seq == 1 and first.sender.user_id == "alice", f"stored: {first}")
    for stream in (a, b):
        check((await stream.next("message")).content == "hello from alice", "live message")
    check((await send(bob, "hi alice")).seq == 2, "second seq")
    for stream in (a, b):
        check((await stream.next("message")).seq == 2, "live reply")

    # History and members.
    history = await chat.ListHistory(pb.ListHistoryRequest(room=room), metadata=bob, timeout=STEP)
    got = [(m.seq, m.content) for m in history.messages]
    check(got == [(1, "hello from alice"), (2, "hi alice")], f"history: {got}")
    members = await chat.ListMembers(pb.ListMembersRequest(room=room), metadata=alice, timeout=STEP)
    check(ids(members.members) == ["alice", "bob"], f"members: {members}")

    # A cut: bob's stream ends, alice sends while he is away, he resumes after seq 2.
    b.cancel()
    check((await a.next("member_left")).member.user_id == "bob", "alice sees bob leave")
    await send(alice, "while bob was away 1")
    await send(alice, "while bob was away 2")
    b = join(bob, resume_after_seq=2)
    check((await b.next("joined")).last_seq == 4, "rejoined at seq 4")
    check((await b.next("message")).content == "while bob was away 1", "first missed")
    check((await b.next("message")).content == "while bob was away 2", "second missed")
    await send(alice, "welcome back")
    # The next message after the replay is the live one: nothing missed, nothing twice.
    live = await b.next("message")
    check((live.seq, live.content) == (5, "welcome back"), f"live after resume: {live}")

    # Messages that live: a reply, an edit, a reaction and a deletion, each an event with
    # the room's next seq, in order on the stream.
    reply = (await chat.SendMessage(
        pb.SendMessageRequest(room=room, content="thanks!", reply_to_seq=5),
        metadata=bob, timeout=STEP,
    )).message
    check((reply.seq, reply.reply_to_seq) == (6, 5), f"reply: {reply}")
    check((await b.next("message")).reply_to_seq == 5, "the reply on the stream")
    edited = (await chat.EditMessage(
        pb.EditMessageRequest(room=room, message_seq=5, content="welcome back, bob"),
        metadata=alice, timeout=STEP,
    )).message
    check((edited.content, edited.updated_seq) == ("welcome back, bob", 7), f"edited: {edited}")
    edit = await b.next("message_edited")
    check((edit.seq, edit.message_seq, edit.content) == (7, 5, "welcome back, bob"), f"edit: {edit}")
    reacted = (await chat.React(
        pb.ReactRequest(room=room, message_seq=5, reaction="👍", add=True),
        metadata=bob, timeout=STEP,
    )).message
    got = [(r.reaction, r.count, r.mine) for r in reacted.reactions]
    check(got == [("👍", 1, True)], f"reactions: {got}")
    reaction = await b.next("reaction_changed")
    check((reaction.seq, reaction.count, reaction.added) == (8, 1, True), f"reaction: {reaction}")
    tombstone = (await chat.DeleteMessage(
        pb.DeleteMessageRequest(room=room, message_seq=6), metadata=bob, timeout=STEP,
    )).message
    check(tombstone.deleted and tombstone.content == "", f"tombstone: {tombstone}")
    deleted = await b.next("message_deleted")
    check((deleted.seq, deleted.message_seq) == (9, 6), f"deleted: {deleted}")
    # Only the sender edits.
    try:
        await chat.EditMessage(
            pb.EditMessageRequest(room=room, message_seq=5, content="mine now"),
            metadata=bob, timeout=STEP,
        )
        raise AssertionError("bob edited alice's message")
    except grpc.aio.AioRpcError as e:
        check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"edit by another: {e.code()}")

    # A bad room name is refused, naming the field.
    try:
        await chat.SendMessage(
            pb.SendMessageRequest(room="Not a room!", content="x"), metadata=alice, timeout=STEP
        )
        raise AssertionError("a bad room name was accepted")
    except grpc.aio.AioRpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"bad room: {e.code()}")
        check(e.details().startswith("room: "), f"bad room message: {e.details()}")

    a.cancel()
    b.cancel()
    await channel.close()


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(out)
        from chat.v1 import chat_pb2, chat_pb2_grpc

        try:
            asyncio.run(flow(chat_pb2, chat_pb2_grpc))
        except Exception as e:  # any failure fails the run, with what went wrong
            print(f"python client: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    print(
        "python client: two-user flow passed "
        "(join, presence, send, receive, history, resume, reply, edit, react, delete)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
