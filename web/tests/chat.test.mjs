// The chat page in headless Chromium (Debian's, through playwright-core) against a real
// chatd: two users in one room see each other and each other's messages live, a page that
// reloads misses nothing and shows nothing twice, the user's rooms with unread badges, the
// layout at 1280 and 390 px wide, errors in plain words, and bans and mutes as the server
// states them.
//
// Needs CHATD_URL, CHATD_LOG, BOB_TOKEN and ADMIN_TOKEN (.ci/with-chatd sets them). The first user signs
// in through the page address chatd printed (token in the fragment), the second by pasting
// a token minted with `chatd token`. The crowd of a big room (over 500 members) signs its own
// tokens with the secret chatd generated (its log names the file) and joins over one HTTP/2
// connection of plain gRPC. CHROMIUM overrides /usr/bin/chromium; screenshots
// go to SCREENSHOT_DIR (default: the system's temporary directory), never the repository.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const STEP = 15_000; // ms any one wait may take
const TEST = { timeout: 90_000 };

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through .ci/with-chatd)`);
  return value;
}

const room = `web-${Date.now().toString(36)}`;
let browser;
let alice; // signed in through the printed address: user "guest"
let bob; // signed in with a pasted token: user "bob"
const pageErrors = [];
/** Every answer of chatd's own origin that was 404 (a missing favicon, say). */
const notFound = [];
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

async function openPage(viewport = DESKTOP) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  page.setDefaultNavigationTimeout(STEP);
  page.on("pageerror", (error) => pageErrors.push(error));
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) pageErrors.push(message.text());
  });
  page.on("response", (response) => {
    if (response.status() === 404) notFound.push(response.url());
  });
  return page;
}

async function signIn(page, token, url = env("CHATD_URL")) {
  await page.goto(url);
  await page.fill("#token-input", token);
  await page.click("#token-form button[type=submit]");
  await page.locator("#whoami").filter({ hasText: "(" }).waitFor();
}

async function screenshot(page, name) {
  const shot = path.join(process.env.SCREENSHOT_DIR ?? tmpdir(), `chatd-${name}.png`);
  await page.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);
}

/** Whether `selector`'s box lies inside the viewport. */
async function inView(page, selector) {
  return page.$eval(selector, (element) => {
    const box = element.getBoundingClientRect();
    return box.top >= 0 && box.left >= 0 && box.bottom <= innerHeight + 1 && box.right <= innerWidth + 1;
  });
}

async function joinRoom(page, name) {
  await page.fill("#room-input", name);
  await page.click("#room-form button[type=submit]");
}

async function say(page, text, kind = "text") {
  await page.selectOption("#content-type", kind);
  await page.fill("#message-input", text);
  await page.click("#send-form button[type=submit]");
  // The sender's own page shows it once it comes back on the stream.
  // An image is a link around it (the link stays when the image cannot load).
  const shown = kind === "image"
    ? page.locator(`#messages li a[href="${text}"]`)
    : page.locator("#messages li", { hasText: text });
  await shown.waitFor();
}

const member = (page, userId) => page.locator(`#members li[data-user-id="${userId}"]`);
const seqs = (page) =>
  page.$$eval("#messages li", (items) => items.map((li) => Number(li.dataset.seq)));

/** An HTTP server whose one image answers after `delayMs`: an image that loads late. */
async function slowImageServer(delayMs) {
  const { createServer } = await import("node:http");
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="600"><rect width="300" height="600" fill="#8ac"/></svg>';
  const server = createServer((request, response) => {
    setTimeout(() => {
      response.writeHead(200, { "content-type": "image/svg+xml" });
      response.end(svg);
    }, delayMs);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/late.svg`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

/** A protobuf varint. */
function varint(n) {
  const out = [];
  do {
    out.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>>= 7;
  } while (n > 0);
  return out;
}

/** A flat protobuf message: [field number, string or encoded bytes] pairs, all length-delimited. */
function encode(fields) {
  const parts = fields.map(([number, value]) => {
    const bytes = typeof value === "string" ? new TextEncoder().encode(value) : value;
    return Buffer.concat([Buffer.from([(number << 3) | 2, ...varint(bytes.length)]), Buffer.from(bytes)]);
  });
  return Buffer.concat(parts);
}

/** Calls AdminService `method` over grpc-web with the admin token; fails unless it answers OK. */
async function adminCall(method, fields) {
  const message = encode(fields);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), message]);
  frame.writeUInt32BE(message.length, 1);
  const response = await fetch(new URL(`/chat.v1.AdminService/${method}`, env("CHATD_URL")), {
    method: "POST",
    headers: {
      "content-type": "application/grpc-web+proto",
      "x-grpc-web": "1",
      authorization: `Bearer ${env("ADMIN_TOKEN")}`,
    },
    body: frame,
    signal: AbortSignal.timeout(STEP),
  });
  assert.equal(response.status, 200, method);
  // The status is in the headers (trailers-only) or in the trailer frame of the body.
  const body = Buffer.from(await response.arrayBuffer()).toString("latin1");
  const status = response.headers.get("grpc-status") ?? /grpc-status:\s*(\d+)/.exec(body)?.[1];
  assert.equal(status, "0", `${method}: ${response.headers.get("grpc-message") ?? body}`);
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // Root in CI cannot use Chromium's sandbox.
    args: ["--no-sandbox"],
    timeout: STEP,
  });
});

after(async () => {
  await browser?.close();
});

test("the printed address signs in; a pasted token signs in; both join one room and see each other", TEST, async () => {
  const log = readFileSync(env("CHATD_LOG"), "utf8");
  const printed = /chat page: open (http:\/\/\S+#token=\S+)/.exec(log);
  assert.ok(printed, `chatd printed no page address with a token:\n${log}`);

  alice = await openPage();
  await alice.goto(printed[1]);
  // The token left the address bar (and the history) at once.
  assert.equal(new URL(alice.url()).hash, "");
  await alice.locator("#whoami", { hasText: "(guest)" }).waitFor();
  await joinRoom(alice, room);
  await alice.locator('#connection[data-state="live"]').waitFor();

  bob = await openPage();
  await bob.goto(env("CHATD_URL"));
  await bob.locator("#sign-in").waitFor();
  await bob.fill("#token-input", env("BOB_TOKEN"));
  await bob.click("#token-form button[type=submit]");
  await bob.locator("#whoami", { hasText: "Bob (bob)" }).waitFor();
  await joinRoom(bob, room);

  await member(bob, "guest").waitFor();
  await member(bob, "bob").waitFor();
  await member(alice, "bob").waitFor(); // live: member_joined
});

test("messages arrive live on both pages; image links render as images, markup as text", TEST, async () => {
  await say(alice, "hello from the first page");
  await bob.locator("#messages li", { hasText: "hello from the first page" }).waitFor();
  await say(bob, "hi from the second page");
  await alice.locator("#messages li", { hasText: "hi from the second page" }).waitFor();

  const images = await slowImageServer(0);
  try {
    await say(alice, images.url, "image");
    const img = bob.locator(`#messages li img[src="${images.url}"]`);
    await img.waitFor();
    assert.equal(await img.getAttribute("referrerpolicy"), "no-referrer");
  } finally {
    await images.close();
  }
  // An image that cannot load shows its address as a link instead of an empty box.
  const broken = "https://example.invalid/cat.png";
  await say(alice, broken, "image");
  const fallback = bob.locator(`#messages li a[href="${broken}"]`, { hasText: "example.invalid/cat.png" });
  await fallback.waitFor();
  // Only http(s) URLs become images: another scheme sent as an image is refused by the
  // page (and the server) before it is sent.
  await bob.selectOption("#content-type", "image");
  await bob.fill("#message-input", "javascript:alert(1)");
  await bob.click("#send-form button[type=submit]");
  await bob.locator("#error", { hasText: "An image must be an http:// or https:// URL." }).waitFor();

  const markup = '<img src="x" onerror="window.pwned=1">';
  await say(bob, markup);
  const item = alice.locator("#messages li", { hasText: markup });
  await item.waitFor();
  assert.equal(await item.locator("img").count(), 0, "user text must never become markup");
  assert.equal(await alice.evaluate(() => window.pwned), undefined);
});

test("a page away or reloading misses nothing and shows nothing twice", TEST, async () => {
  // Away: the stream closes, the other page sees the user leave, messages go on.
  await bob.goto("about:blank");
  await member(alice, "bob").waitFor({ state: "detached" });
  await say(alice, "sent while the second page was away 1");
  await say(alice, "sent while the second page was away 2");
  await bob.goto(env("CHATD_URL"));
  await bob.locator("#messages li", { hasText: "sent while the second page was away 2" }).waitFor();
  await member(alice, "bob").waitFor();

  // Reloading while messages are sent.
  await Promise.all([bob.reload(), say(alice, "sent during the reload")]);
  await say(alice, "sent after the reload");
  await bob.locator("#messages li", { hasText: "sent after the reload" }).waitFor();

  const expected = await seqs(alice);
  const last = expected.at(-1);
  assert.deepEqual(expected, Array.from({ length: last }, (_, i) => i + 1));
  assert.deepEqual(await seqs(bob), expected, "the reloaded page shows every seq exactly once");
  for (const text of ["sent while the second page was away 1", "sent during the reload"]) {
    assert.equal(await bob.locator("#messages li", { hasText: text }).count(), 1, text);
  }

  await screenshot(bob, "room-1280");
});

test("scrolling back loads older history a page at a time", TEST, async () => {
  // More than one page (50) of history, then a fresh page in the room: it shows the
  // newest page, and "Load older messages" fetches the rest down to seq 1.
  for (let i = 1; i <= 50; i++) await say(alice, `filler ${i}`);
  const last = (await seqs(alice)).at(-1);
  const page = await openPage();
  await page.goto(env("CHATD_URL"));
  await page.fill("#token-input", env("BOB_TOKEN"));
  await page.click("#token-form button[type=submit]");
  await joinRoom(page, room);
  await page.locator(`#messages li[data-seq="${last - 49}"]`).waitFor();
  assert.equal((await seqs(page))[0], last - 49, "the first page is the newest 50");
  // Loading older messages leaves the message being read where it is on screen.
  // (Its text: the day's label or the sender's name above it may go, as older messages
  // from the same day and sender now come before it.)
  const reading = page.locator(`#messages li[data-seq="${last - 49}"] .body`);
  await page.$eval("#timeline", (t) => { t.scrollTop = 0; });
  const bottom = await reading.evaluate((body) => body.getBoundingClientRect().bottom);
  await page.click("#older");
  await page.locator('#messages li[data-seq="1"]').waitFor({ state: "attached" });
  const moved = (await reading.evaluate((body) => body.getBoundingClientRect().bottom)) - bottom;
  assert.ok(Math.abs(moved) <= 2, `the message being read moved by ${moved}px`);
  await page.locator("#older").waitFor({ state: "hidden" });
  assert.deepEqual(await seqs(page), Array.from({ length: last }, (_, i) => i + 1));
  await page.context().close();
});

/**
 * A TCP proxy to chatd that can cut every connection through it and refuse new ones until
 * restored: a dropped network, as the page sees it.
 */
async function cuttableProxy(target) {
  const [host, port] = [target.hostname, Number(target.port)];
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const upstream = net.connect(port, host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    cut() {
      cut = true;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      cut = false;
    },
    close: () => new Promise((resolve) => { server.close(resolve); for (const s of sockets) s.destroy(); }),
  };
}

test("a dropped connection reconnects and resumes with nothing missed", TEST, async () => {
  const proxy = await cuttableProxy(new URL(env("CHATD_URL")));
  const page = await openPage();
  try {
    await page.goto(proxy.url);
    await page.fill("#token-input", env("BOB_TOKEN"));
    await page.click("#token-form button[type=submit]");
    await joinRoom(page, room);
    await page.locator('#connection[data-state="live"]').waitFor();
    const before = (await seqs(alice)).at(-1);
    await page.locator(`#messages li[data-seq="${before}"]`).waitFor();

    proxy.cut();
    await page.locator('#connection[data-state="reconnecting"]').waitFor();
    // Nobody's comings and goings reach a page that is offline: its list says so.
    await page.locator("#members-pane.stale").waitFor();
    await page.locator("#members-state").waitFor();
    await say(alice, "sent while the connection was down 1");
    await say(alice, "sent while the connection was down 2");
    proxy.restore();

    await page.locator('#connection[data-state="live"]').waitFor();
    await page.locator("#members-state").waitFor({ state: "hidden" });
    assert.equal(await page.locator("#members-pane.stale").count(), 0);
    await page.locator("#messages li", { hasText: "sent while the connection was down 2" }).waitFor();
    await say(alice, "sent after the connection came back");
    await page.locator("#messages li", { hasText: "sent after the connection came back" }).waitFor();
    // The newest page of history, then every later seq exactly once, in order.
    const shown = await seqs(page);
    const last = (await seqs(alice)).at(-1);
    assert.deepEqual(shown, Array.from({ length: last - shown[0] + 1 }, (_, i) => shown[0] + i));
    for (const text of ["sent while the connection was down 1", "sent while the connection was down 2"]) {
      assert.equal(await page.locator("#messages li", { hasText: text }).count(), 1, text);
    }
  } finally {
    await page.context().close();
    await proxy.close();
  }
});

test("nothing of a room shows before one is open; own messages stand apart; links are live; days and times show", TEST, async () => {
  const page = await openPage();
  try {
    await signIn(page, env("BOB_TOKEN"));
    await page.locator("#rooms-pane").waitFor();
    await page.locator("#no-room").waitFor();
    assert.equal(await page.locator("#room-view").isVisible(), false, "no room pane before a room is open");
    assert.equal(await page.locator("#send-form").isVisible(), false, "no send box before a room is open");
  } finally {
    await page.context().close();
  }

  await say(alice, "read https://example.invalid/docs?page=2. Then reply");
  const linked = bob.locator('#messages li a[href="https://example.invalid/docs?page=2"]');
  await linked.waitFor();
  assert.equal(await linked.textContent(), "https://example.invalid/docs?page=2", "the full stop stays text");
  assert.equal(await linked.getAttribute("rel"), "noopener noreferrer");

  const mine = await alice.$$eval("#messages li.mine", (items) => items.length);
  const theirs = await alice.$$eval("#messages li:not(.mine)", (items) => items.length);
  assert.ok(mine > 0 && theirs > 0, `alice's page tells her messages (${mine}) from bob's (${theirs})`);
  const own = alice.locator("#messages li.mine").last();
  const other = alice.locator("#messages li:not(.mine)").last();
  const align = (item) => item.evaluate((li) => getComputedStyle(li).alignItems);
  assert.equal(await align(own), "flex-end");
  assert.equal(await align(other), "flex-start");

  const first = bob.locator("#messages li.new-day").first();
  assert.equal(await first.getAttribute("data-day"), "Today");
  assert.match(await bob.locator("#messages li time").last().getAttribute("datetime"), /^\d{4}-\d\d-\d\dT/);
});

test("the rooms list shows unread badges and clears them as the room is read", TEST, async () => {
  const other = `${room}-other`;
  // User alice (not the guest, not bob: their other pages read the room as it goes).
  const page = await openPage();
  try {
    await signIn(page, env("ALICE_TOKEN"));
    await joinRoom(page, room);
    await page.locator('#connection[data-state="live"]').waitFor();
    // Joining makes the room hers: it is listed.
    await page.locator(`#rooms li[data-room="${room}"]`).waitFor();
    // Away in another room, two messages arrive in the first: its badge counts them.
    await joinRoom(page, other);
    await page.locator('#connection[data-state="live"]').waitFor();
    await say(alice, "unread one");
    await say(alice, "unread two");
    const badge = page.locator(`#rooms li[data-room="${room}"] .badge`);
    await badge.filter({ hasText: /^2$/ }).waitFor({ timeout: 30_000 });
    assert.match(await page.locator(`#rooms li[data-room="${room}"] .preview`).textContent(), /unread two/);
    // Opening it shows them and marks them read: the badge goes and stays gone.
    await page.click(`#rooms li[data-room="${room}"] button`);
    await page.locator("#messages li", { hasText: "unread two" }).waitFor();
    await badge.waitFor({ state: "detached" });
    await joinRoom(page, other);
    await page.locator('#connection[data-state="live"]').waitFor();
    await page.reload();
    await page.locator(`#rooms li[data-room="${room}"]`).waitFor();
    assert.equal(await badge.count(), 0, "the room was marked read on the server");
  } finally {
    await page.context().close();
  }
});

test("the newest message stays in view when an image loads late", TEST, async () => {
  const images = await slowImageServer(1_500);
  try {
    await say(alice, images.url, "image");
    const img = bob.locator(`#messages li img[src="${images.url}"]`);
    await img.waitFor();
    await bob.waitForFunction((src) => {
      const image = document.querySelector(`#messages li img[src="${src}"]`);
      return image?.complete && image.naturalHeight > 0;
    }, images.url);
    await bob.waitForFunction(() => {
      const t = document.getElementById("timeline");
      return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
    });
    assert.ok(await inView(bob, "#messages li:last-child"), "the image is in view once loaded");
  } finally {
    await images.close();
  }
});

test("at 390 px: one pane at a time, nothing overflows, an error leaves the send box in view", TEST, async () => {
  const page = await openPage(PHONE);
  try {
    await signIn(page, env("BOB_TOKEN"));
    await page.locator(`#rooms li[data-room="${room}"]`).waitFor();
    await screenshot(page, "rooms-390");
    await page.click(`#rooms li[data-room="${room}"] button`);
    await page.locator('#connection[data-state="live"]').waitFor();
    await page.locator("#messages li").last().waitFor();
    assert.equal(await page.locator("#rooms-pane").isVisible(), false, "the room takes the whole screen");
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `nothing wider than the screen (${width}px)`);
    assert.ok(await inView(page, "#send-form"), "the send box is on screen");

    // An error floats over the page; the send box stays where it was.
    const before = await page.$eval("#send-form", (f) => f.getBoundingClientRect().top);
    await page.selectOption("#content-type", "image");
    await page.fill("#message-input", "not a link");
    await page.click("#send-form button[type=submit]");
    await page.locator("#error").waitFor();
    assert.ok(await inView(page, "#send-form"), "the send box is still on screen");
    assert.equal(await page.$eval("#send-form", (f) => f.getBoundingClientRect().top), before);
    await page.click("#error-close");

    await page.click("#members-toggle");
    await page.locator('#members li[data-user-id="bob"]').waitFor();
    await screenshot(page, "room-390");
    await page.click("#members-toggle");
    await page.click("#back");
    await page.locator("#rooms-pane").waitFor();
    assert.equal(await page.locator("#room-view").isVisible(), false);
  } finally {
    await page.context().close();
  }
});

/** The list item of the message with `text` on `page`. */
const item = (page, text) => page.locator("#messages li", { hasText: text }).last();

/** Clicks one of a message's actions (they show on hover). */
async function act(page, text, action) {
  const li = item(page, text);
  await li.hover();
  await li.locator(`.actions button.${action}`).click();
}

test("reply with a quoted line, edit and delete your own messages, react: both pages see it", TEST, async () => {
  await say(alice, "what shall we eat?");
  await item(bob, "what shall we eat?").waitFor();

  // Reply: the bar quotes the message; the reply shows the quoted line on both pages.
  await act(bob, "what shall we eat?", "reply");
  await bob.locator("#reply-bar", { hasText: "Guest: what shall we eat?" }).waitFor();
  await say(bob, "pizza");
  await bob.locator("#reply-bar").waitFor({ state: "hidden" });
  const quote = alice.locator("#messages li", { hasText: "pizza" }).locator(".quote");
  await quote.filter({ hasText: "Guest: what shall we eat?" }).waitFor();

  // Only your own messages can be edited or deleted.
  await item(alice, "pizza").hover();
  assert.equal(await item(alice, "pizza").locator(".actions button.edit").count(), 0);
  assert.equal(await item(alice, "pizza").locator(".actions button.delete").count(), 0);

  // Edit: the other page shows the new content, marked edited; so does the quote.
  await act(bob, "pizza", "edit");
  await bob.fill("#messages .edit-form input", "pizza, with olives");
  await bob.press("#messages .edit-form input", "Enter");
  await item(alice, "pizza, with olives").locator(".edited").waitFor();
  await item(bob, "pizza, with olives").locator(".edited").waitFor();

  // React: pick one; the count shows on both pages, yours highlighted; click it to take it back.
  await act(alice, "pizza, with olives", "react");
  await item(alice, "pizza, with olives").locator('.picker button[aria-label="React with 🎉"]').click();
  await item(bob, "pizza, with olives").locator(".chip", { hasText: "🎉 1" }).waitFor();
  await item(alice, "pizza, with olives").locator(".chip.mine", { hasText: "🎉 1" }).waitFor();
  await act(bob, "pizza, with olives", "react");
  await item(bob, "pizza, with olives").locator('.picker button[aria-label="React with 🎉"]').click();
  await item(alice, "pizza, with olives").locator(".chip", { hasText: "🎉 2" }).waitFor();
  await item(alice, "pizza, with olives").locator(".chip.mine").click();
  await item(bob, "pizza, with olives").locator(".chip", { hasText: "🎉 1" }).waitFor();
  await item(alice, "pizza, with olives").locator(".chip:not(.mine)", { hasText: "🎉 1" }).waitFor();
  await screenshot(alice, "changes-1280");

  // Delete: a tombstone on both pages, without actions or reactions.
  bob.once("dialog", (dialog) => dialog.accept());
  await act(bob, "pizza, with olives", "delete");
  const tomb = (page) => page.locator("#messages li .body.deleted", { hasText: "This message was deleted." });
  await tomb(alice).waitFor();
  await tomb(bob).waitFor();
  assert.equal(await alice.locator("#messages li", { hasText: "pizza, with olives" }).count(), 0);

  // A reloaded page replays the room and shows the same.
  await bob.reload();
  await tomb(bob).waitFor();
});

test("who is typing shows on the other page; your last message says who has seen it", TEST, async () => {
  // Typing: the other page says so; emptying the box or sending ends it.
  await bob.fill("#message-input", "I am writ");
  await alice.locator("#typing", { hasText: "Bob is typing…" }).waitFor();
  assert.equal(await bob.locator("#typing").textContent(), "", "nobody sees their own flag");
  await bob.fill("#message-input", "");
  await alice.waitForFunction(() => document.getElementById("typing").textContent === "");
  await bob.fill("#message-input", "typing then sending");
  await alice.locator("#typing", { hasText: "Bob is typing…" }).waitFor();
  await bob.click("#send-form button[type=submit]");
  await item(alice, "typing then sending").waitFor();
  await alice.waitForFunction(() => document.getElementById("typing").textContent === "");

  // Seen by: the other page reads the message (it is at the bottom, visible): its marker
  // moves, and the sender's page says so under the message.
  await say(alice, "did you see this?");
  await item(bob, "did you see this?").waitFor();
  await item(alice, "did you see this?").locator(".seen", { hasText: "Seen by Bob" }).waitFor();
  await screenshot(alice, "seen-1280");
});

test("a bad room name is explained in plain words, before any request", TEST, async () => {
  await joinRoom(alice, "Bad Room!");
  const error = alice.locator("#error");
  await error.waitFor();
  const text = await error.textContent();
  assert.match(text, /Room names are up to 64 characters: lowercase letters, digits/);
  assert.doesNotMatch(text, /\^\[|must match|InvalidArgument/, "no regular expressions or status names");
  await alice.click("#error-close");
  await error.waitFor({ state: "hidden" });
});

test("a muted user is told why a send is refused; a banned user's room closes with the reason", TEST, async () => {
  await bob.locator('#connection[data-state="live"]').waitFor();
  const target = [[1, room], [2, "bob"]];
  await adminCall("MuteUser", [...target, [4, "too loud"]]);
  await bob.fill("#message-input", "can anyone hear me?");
  await bob.click("#send-form button[type=submit]");
  const error = bob.locator("#error");
  await error.filter({ hasText: `Not sent. You are muted in room ${room} until an administrator lifts it. Reason: too loud` }).waitFor();
  await screenshot(bob, "muted-1280");
  await bob.click("#error-close");
  await adminCall("UnmuteUser", target);
  await say(bob, "heard again");

  // A ban for an hour ends the stream: the page says so, with the time and the reason, and
  // does not try to join again.
  let joins = 0;
  bob.on("request", (request) => {
    if (request.url().endsWith("/chat.v1.ChatService/JoinRoom")) joins += 1;
  });
  const hour = Buffer.from([0x08, ...varint(3600)]);
  await adminCall("BanUser", [...target, [3, hour], [4, "spam"]]);
  const banned = error.filter({ hasText: `You cannot open "${room}". You are banned from room ${room} until ` });
  await banned.waitFor();
  assert.match(await error.textContent(), /Reason: spam/);
  await member(alice, "bob").waitFor({ state: "detached" });
  await screenshot(bob, "banned-1280");
  const seen = joins;
  await bob.waitForTimeout(1500);
  assert.equal(joins, seen, "a banned page must not reconnect");
  await bob.locator('#connection[data-state="idle"]').waitFor({ state: "attached" });

  await adminCall("UnbanUser", target);
  await bob.click("#error-close");
  await joinRoom(bob, room);
  await bob.locator('#connection[data-state="live"]').waitFor();
});

/** A token for `userId`, signed with the secret chatd generated (the file its log names). */
function mint(userId, name) {
  const log = readFileSync(env("CHATD_LOG"), "utf8");
  const file = /token secret .*?path=(\S+)/.exec(log)?.[1];
  assert.ok(file, `chatd's log names no token secret file:\n${log}`);
  const secret = readFileSync(file, "utf8").trim();
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: userId, name, iat: now, exp: now + 3600 })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** Users in a room, each with one JoinRoom stream over one HTTP/2 connection (plain gRPC). */
function crowd(roomName) {
  const session = http2.connect(env("CHATD_URL"));
  session.on("error", () => {});
  const streams = new Map();
  return {
    /** Joins `userId`; resolves once the stream's first event (`joined`) came. */
    join(userId, name) {
      const message = encode([[1, roomName]]);
      const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), message]);
      frame.writeUInt32BE(message.length, 1);
      const stream = session.request({
        ":method": "POST",
        ":path": "/chat.v1.ChatService/JoinRoom",
        "content-type": "application/grpc",
        te: "trailers",
        authorization: `Bearer ${mint(userId, name)}`,
      });
      streams.set(userId, stream);
      return new Promise((resolve, reject) => {
        let joined = false;
        const failed = (why) => {
          if (!joined) reject(new Error(`${userId} did not join: ${why}`));
        };
        // Everything after `joined` (the others' arrivals) is read and dropped.
        stream.on("data", () => {
          if (!joined) resolve();
          joined = true;
        });
        stream.on("response", (headers) => {
          if (headers["grpc-status"] && headers["grpc-status"] !== "0") failed(headers["grpc-message"]);
        });
        stream.on("trailers", (trailers) => failed(`${trailers["grpc-status"]} ${trailers["grpc-message"]}`));
        stream.on("error", (error) => failed(error.message));
        stream.on("close", () => failed("the stream closed"));
        stream.end(frame);
      });
    },
    /** Closes `userId`'s stream: they leave the room. */
    leave(userId) {
      streams.get(userId)?.close(http2.constants.NGHTTP2_CANCEL);
      streams.delete(userId);
    },
    close() {
      for (const stream of streams.values()) stream.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
    },
  };
}

test("a room of over 500: the count is the room's, the list shows 500 and \"Show more\" pages through the rest", { timeout: 180_000 }, async () => {
  const big = `${room}-big`;
  const people = crowd(big);
  const id = (n) => `m${String(n).padStart(4, "0")}`;
  const page = await openPage();
  const phone = await openPage(PHONE);
  try {
    // 501 members, joining 50 at a time; with the page's user the room has 502.
    for (let first = 1; first <= 501; first += 50) {
      const batch = [];
      for (let n = first; n < first + 50 && n <= 501; n++) batch.push(people.join(id(n), `Member ${n}`));
      await Promise.all(batch);
    }
    await signIn(page, env("BOB_TOKEN"));
    await joinRoom(page, big);
    await page.locator('#connection[data-state="live"]').waitFor();
    const title = page.locator("#members-title");
    const summary = page.locator("#members-summary");
    const more = page.locator("#members-more");
    const items = page.locator("#members li");
    await title.filter({ hasText: /^502 members$/ }).waitFor();
    assert.equal(await page.locator("#member-count").textContent(), "502");
    // `joined` listed at most 500: the caller first, then the others by user id.
    await more.waitFor();
    const listed = await items.count();
    assert.ok(listed > 1 && listed <= 500, `${listed} members listed`);
    assert.equal(await summary.textContent(), `Showing ${listed} of 502`);
    assert.equal(await items.first().getAttribute("data-user-id"), "bob");
    assert.equal(await items.first().textContent(), "Bob (you)");
    await member(page, id(1)).waitFor();
    assert.equal(await member(page, id(501)).count(), 0, "the last by user id is not listed yet");
    await screenshot(page, "members-1280");

    // Arrivals and departures move the count, whether or not the list shows them.
    people.leave(id(1));
    await member(page, id(1)).waitFor({ state: "detached" });
    await title.filter({ hasText: /^501 members$/ }).waitFor();
    people.leave(id(501));
    await title.filter({ hasText: /^500 members$/ }).waitFor();
    await people.join(id(600), "Member 600");
    await member(page, id(600)).waitFor();
    await title.filter({ hasText: /^501 members$/ }).waitFor();
    assert.equal(await summary.textContent(), `Showing ${listed} of 501`);

    // At 390 px the list opens over the timeline; "Show more" is at its end.
    await signIn(phone, env("BOB_TOKEN"));
    await joinRoom(phone, big);
    await phone.locator('#connection[data-state="live"]').waitFor();
    await phone.locator("#member-count", { hasText: /^501$/ }).waitFor();
    await phone.click("#members-toggle");
    await phone.locator("#members-more").scrollIntoViewIfNeeded();
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `nothing wider than the screen (${width}px)`);
    await screenshot(phone, "members-390");

    // A page that cannot be fetched is said in the banner; the button stays for another try.
    await page.route("**/chat.v1.ChatService/ListMembers", (route) => route.abort());
    await more.click();
    await page.locator("#error", { hasText: "More members could not be loaded." }).waitFor();
    await page.unroute("**/chat.v1.ChatService/ListMembers");
    await page.click("#error-close");
    assert.ok(await more.isEnabled());

    // "Show more" pages from the start, skips who is listed, and goes on until a page adds
    // someone; after the last page everyone is listed and the button goes.
    await more.click();
    await more.waitFor({ state: "hidden" });
    await summary.waitFor({ state: "hidden" });
    await page.waitForFunction(() => document.querySelectorAll("#members li").length === 501);
    const ids = await page.$$eval("#members li", (list) => list.map((li) => li.dataset.userId));
    assert.equal(new Set(ids).size, 501, "each member once");
    const expected = ["bob", ...Array.from({ length: 499 }, (_, i) => id(i + 2)), id(600)];
    assert.deepEqual([...ids].sort(), expected.sort());
    assert.equal(await title.textContent(), "501 members");
    assert.equal(await page.locator("#error").isVisible(), false);

    // Once everyone is listed the count is the list's again.
    people.leave(id(2));
    await member(page, id(2)).waitFor({ state: "detached" });
    await title.filter({ hasText: /^500 members$/ }).waitFor();
    assert.equal(await items.count(), 500);
  } finally {
    people.close();
    await page.context().close();
    await phone.context().close();
  }
});

test("the page asks for nothing that is not there, and no script fails", TEST, async () => {
  for (const icon of ["/favicon.svg", "/favicon.ico"]) {
    const response = await fetch(new URL(icon, env("CHATD_URL")));
    assert.equal(response.status, 200, icon);
  }
  assert.deepEqual(notFound, [], "no 404 on any page (favicon included)");
  assert.deepEqual(pageErrors, [], "no script errors and no CSP violations on any page");
});
