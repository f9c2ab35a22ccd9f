// The chat page in headless Chromium (Debian's, through playwright-core) against a real
// chatd: two users in one room see each other and each other's messages live, a page that
// reloads misses nothing and shows nothing twice, a bad room name shows the server's message.
//
// Needs CHATD_URL, CHATD_LOG and BOB_TOKEN (.ci/with-chatd sets them). The first user signs
// in through the page address chatd printed (token in the fragment), the second by pasting
// a token minted with `chatd token`. CHROMIUM overrides /usr/bin/chromium; the screenshot
// goes to SCREENSHOT_DIR (default: the system's temporary directory), never the repository.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
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

async function openPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  page.setDefaultNavigationTimeout(STEP);
  page.on("pageerror", (error) => pageErrors.push(error));
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) pageErrors.push(message.text());
  });
  return page;
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
  const shown = kind === "image"
    ? page.locator(`#messages li img[src="${text}"]`)
    : page.locator("#messages li", { hasText: text });
  await shown.waitFor();
}

const member = (page, userId) => page.locator(`#members li[data-user-id="${userId}"]`);
const seqs = (page) =>
  page.$$eval("#messages li", (items) => items.map((li) => Number(li.dataset.seq)));

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

  const image = "https://example.invalid/cat.png";
  await say(alice, image, "image");
  const img = bob.locator("#messages li img");
  await img.waitFor();
  assert.equal(await img.getAttribute("src"), image);
  assert.equal(await img.getAttribute("referrerpolicy"), "no-referrer");
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

  const shot = path.join(process.env.SCREENSHOT_DIR ?? tmpdir(), "chatd-page.png");
  await bob.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
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
  await page.click("#older");
  await page.locator('#messages li[data-seq="1"]').waitFor();
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
    await say(alice, "sent while the connection was down 1");
    await say(alice, "sent while the connection was down 2");
    proxy.restore();

    await page.locator('#connection[data-state="live"]').waitFor();
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

test("a bad room name shows the server's message", TEST, async () => {
  await joinRoom(alice, "Bad Room!");
  const error = alice.locator("#error");
  await error.waitFor();
  const text = await error.textContent();
  assert.match(text, /Cannot join "bad room!": room: must match/);
  assert.match(text, /InvalidArgument/);
  assert.deepEqual(pageErrors, [], "no script errors and no CSP violations on any page");
});
