// The official JavaScript client (@microsoft/signalr, installed here by `npm ci`) against a
// hub of the crate: `node scenarios.mjs SCENARIO URL [ARGS...]`. tests/signalr.rs runs each
// scenario against examples/signalr_chat.rs. Prints `ok` and exits 0 when every check
// holds; otherwise prints why and exits 1. Every wait is bounded (WAIT) and says what it
// waited for. Lines starting with `event:` tell the Rust test where the scenario is.
import * as signalR from "@microsoft/signalr";
import assert from "node:assert/strict";

const [scenario, url, ...rest] = process.argv.slice(2);
const WAIT = 15000;

/** Resolves with `promise`, or fails after `ms` saying what it waited for. */
function within(what, promise, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Tells the Rust test something (it reads stdout line by line). */
function event(name) {
  console.log(`event: ${name}`);
}

/** Calls of one client method, to wait for in order. */
class Inbox {
  constructor(connection, method) {
    this.items = [];
    this.waiters = [];
    connection.on(method, (...args) => {
      this.items.push(args);
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  /** The next call (its arguments), waiting for it. */
  async next(what) {
    while (this.items.length === 0) {
      await within(what, new Promise((resolve) => this.waiters.push(resolve)));
    }
    return this.items.shift();
  }
}

/** Every record the client receives, as text (the client's trace of its transport). */
class Wire {
  constructor() {
    this.records = [];
    this.waiters = [];
    this.sockets = 0;
  }

  logger() {
    return {
      log: (level, message) => {
        if (message.includes("WebSocket connected to")) this.sockets += 1;
        const at = message.indexOf("Content: '");
        if (message.includes("data received") && at >= 0) {
          const content = message.slice(at + "Content: '".length, message.lastIndexOf("'"));
          for (const record of content.split("\u001e").filter((r) => r.length > 0)) {
            try {
              this.records.push(JSON.parse(record));
            } catch {
              this.records.push({ unparsed: record });
            }
          }
          for (const wake of this.waiters.splice(0)) wake();
        } else if (level >= signalR.LogLevel.Error) {
          console.error(message);
        }
      },
    };
  }

  /** Waits for a record that `test` accepts; returns its index. */
  async find(what, test) {
    for (;;) {
      const at = this.records.findIndex(test);
      if (at >= 0) return at;
      await within(what, new Promise((resolve) => this.waiters.push(resolve)));
    }
  }
}

function builder(options = {}) {
  let b = new signalR.HubConnectionBuilder();
  if (options.wire) {
    b = b
      .withUrl(url, { logMessageContent: true, ...(options.http || {}) })
      .configureLogging(options.wire.logger());
  } else {
    b = b.withUrl(url, options.http || {}).configureLogging(signalR.LogLevel.Warning);
  }
  if (options.reconnect) b = b.withAutomaticReconnect(options.reconnect);
  if (options.stateful) b = b.withStatefulReconnect();
  return b;
}

async function started(options = {}) {
  const connection = builder(options).build();
  await within("the connection to start", connection.start());
  return connection;
}

/** A call that must fail; returns its error's message. */
async function failing(what, promise) {
  try {
    await within(what, promise);
  } catch (error) {
    return error.message;
  }
  assert.fail(`${what} succeeded, but should have failed`);
}

const scenarios = {
  // Every method of the example, the errors, and the connection going on after them.
  async methods() {
    const connection = await started();
    const received = new Inbox(connection, "ReceiveMessage");
    assert.match(connection.connectionId, /^[A-Za-z0-9_-]{22}$/);
    await within("SendMessage", connection.invoke("SendMessage", "ana", "hello"));
    assert.deepEqual(await received.next("ReceiveMessage"), ["ana", "hello"]);
    const value = { text: "héllo \"quoted\"\n", list: [1, 2.5, null, true], nested: { a: "b" } };
    assert.deepEqual(await within("Echo", connection.invoke("Echo", value)), value);
    assert.equal(await within("Echo of a string", connection.invoke("Echo", "x\u001ey")), "x\u001ey");
    assert.equal(await within("Echo of null", connection.invoke("Echo", null)), null);
    assert.match(await failing("Fail", connection.invoke("Fail")), /Fail was called: this is its error/);
    assert.match(await failing("an unknown method", connection.invoke("NoSuchMethod")), /Unknown hub method 'NoSuchMethod'/);
    assert.match(await failing("Echo without its argument", connection.invoke("Echo")), /Failed to invoke 'Echo'/);
    assert.match(await failing("SendMessage with a number", connection.invoke("SendMessage", 1, 2)), /Failed to invoke 'SendMessage'/);
    // A method without a result: invoke resolves (with nothing), send resolves too.
    assert.equal(await within("JoinGroup", connection.invoke("JoinGroup", "g")), undefined);
    await within("send (no answer wanted)", connection.send("SendMessage", "ana", "sent"));
    assert.deepEqual(await received.next("the sent message"), ["ana", "sent"]);
    // Many calls at once: answered in order, none lost.
    const echoes = await within("100 Echo calls", Promise.all([...Array(100).keys()].map((i) => connection.invoke("Echo", i))));
    assert.deepEqual(echoes, [...Array(100).keys()]);
    assert.equal(connection.state, signalR.HubConnectionState.Connected);
    await connection.stop();
  },

  // Groups: members get what is sent to their group, others do not; leaving works.
  async groups() {
    const [a, b, c] = await Promise.all([started(), started(), started()]);
    const inboxes = [a, b, c].map((connection) => new Inbox(connection, "ReceiveMessage"));
    await within("a and b joining g1", Promise.all([a.invoke("JoinGroup", "g1"), b.invoke("JoinGroup", "g1")]));
    await within("c joining g2", c.invoke("JoinGroup", "g2"));
    await within("SendToGroup g1", c.invoke("SendToGroup", "g1", "carl", "to g1"));
    // A message to all after it: each client gets things in the order they were sent, so
    // c seeing the marker first means it never got the group's message.
    await within("the marker", a.invoke("SendMessage", "ana", "marker 1"));
    assert.deepEqual(await inboxes[0].next("g1's message at a"), ["carl", "to g1"]);
    assert.deepEqual(await inboxes[1].next("g1's message at b"), ["carl", "to g1"]);
    assert.deepEqual(await inboxes[2].next("the marker at c"), ["ana", "marker 1"]);
    assert.deepEqual(await inboxes[0].next("the marker at a"), ["ana", "marker 1"]);
    assert.deepEqual(await inboxes[1].next("the marker at b"), ["ana", "marker 1"]);
    await within("b leaving g1", b.invoke("LeaveGroup", "g1"));
    await within("SendToGroup g1 again", a.invoke("SendToGroup", "g1", "ana", "g1 without b"));
    await within("the second marker", a.invoke("SendMessage", "ana", "marker 2"));
    assert.deepEqual(await inboxes[0].next("g1's second message at a"), ["ana", "g1 without b"]);
    assert.deepEqual(await inboxes[1].next("the second marker at b"), ["ana", "marker 2"]);
    assert.deepEqual(await inboxes[2].next("the second marker at c"), ["ana", "marker 2"]);
    await within("SendToGroup g2", a.invoke("SendToGroup", "g2", "ana", "to g2"));
    assert.deepEqual(await inboxes[2].next("g2's message at c"), ["ana", "to g2"]);
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  },

  // A stream to its end, then a stream cancelled midway: it still ends with a Completion,
  // and no item follows that.
  async streams() {
    const wire = new Wire();
    const connection = await started({ wire });
    const items = [];
    await within("Counter(5, 1) to complete", new Promise((resolve, reject) => {
      connection.stream("Counter", 5, 1).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject });
    }));
    assert.deepEqual(items, [0, 1, 2, 3, 4]);

    const seen = [];
    let subscription;
    await within("3 items of Counter(100000, 5)", new Promise((resolve, reject) => {
      subscription = connection.stream("Counter", 100000, 5).subscribe({
        next: (i) => { seen.push(i); if (seen.length === 3) resolve(); },
        complete: () => reject(new Error("the long stream completed by itself")),
        error: reject,
      });
    }));
    const streamId = wire.records.find((r) => r.type === 2 && r.item === seen[0] && r.invocationId !== "0")?.invocationId;
    assert.ok(streamId !== undefined, "the long stream's items are on the wire");
    subscription.dispose(); // sends CancelInvocation
    const completion = await wire.find("the cancelled stream's Completion",
      (r) => r.type === 3 && r.invocationId === streamId);
    assert.equal(wire.records[completion].error, undefined);
    // Anything the stream sent after its Completion would be before this Echo's answer.
    assert.equal(await within("Echo after the cancel", connection.invoke("Echo", "after")), "after");
    const late = wire.records.slice(completion + 1).filter((r) => r.type === 2 && r.invocationId === streamId);
    assert.deepEqual(late, [], "items after the Completion");
    const sent = wire.records.filter((r) => r.type === 2 && r.invocationId === streamId).length;
    assert.ok(sent < 1000, `the cancelled stream stopped (${sent} items)`);
    await connection.stop();
  },

  // Client results: the hub awaits the caller's ClientEcho; a client without it answers
  // an error. (A client's calls run one at a time, as in ASP.NET Core: ClientEcho must not
  // wait for another call of its own to the hub.)
  async "client-results"() {
    const connection = builder().build();
    let asked = 0;
    connection.on("ClientEcho", async (value) => {
      asked += 1;
      // The hub's method waits for this answer: the server must read on to hear it.
      await new Promise((resolve) => setTimeout(resolve, 50));
      return { echoed: value };
    });
    await within("start", connection.start());
    assert.deepEqual(await within("AskClient", connection.invoke("AskClient", [1, "two"])), { echoed: [1, "two"] });
    assert.equal(asked, 1);
    const without = await started();
    assert.match(await failing("AskClient without ClientEcho", without.invoke("AskClient", 1)), /client/i);
    await Promise.all([connection.stop(), without.stop()]);
  },

  // The server is stopped (Ctrl-C: a Close with allowReconnect) and started again on the
  // same port: the client reconnects by itself and calls again. The Rust test restarts
  // the server after `event: connected`, and again after `event: reconnected 1`.
  async reconnect() {
    const closes = [];
    const connection = builder({ reconnect: [0, 200, 200, 200, 500, 500, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000] }).build();
    connection.onclose((error) => closes.push(error));
    let reconnected = 0;
    let reconnecting = 0;
    const wake = [];
    connection.onreconnecting(() => { reconnecting += 1; });
    connection.onreconnected(() => { reconnected += 1; for (const w of wake.splice(0)) w(); });
    await within("start", connection.start());
    const first = connection.connectionId;
    event("connected");
    for (const round of [1, 2]) {
      while (reconnected < round) {
        await within(`reconnect ${round}`, new Promise((resolve) => wake.push(resolve)), 30000);
      }
      assert.equal(await within("Echo after reconnecting", connection.invoke("Echo", round)), round);
      event(`reconnected ${round}`);
    }
    assert.notEqual(connection.connectionId, first, "a new connection after a restart");
    assert.equal(reconnecting, 2);
    assert.deepEqual(closes, []);
    await connection.stop();
  },
};

// Stateful reconnect: while COUNT stream items flow from the server and COUNT messages
// go to the server and back to all, the Rust test cuts the socket (a TCP proxy drops it
// after `event: cut`). The client reattaches by itself, with no new handshake: every item
// and every message arrives once, in order, under the same connection id.
scenarios.stateful = async function stateful(count = "200") {
  const n = Number(count);
  const wire = new Wire();
  const connection = builder({ wire, stateful: true }).build();
  let reconnecting = 0;
  connection.onreconnecting(() => { reconnecting += 1; });
  const received = new Inbox(connection, "ReceiveMessage");
  await within("start", connection.start());
  const id = connection.connectionId;
  const items = [];
  const streamed = new Promise((resolve, reject) => {
    connection.stream("Counter", n, 5).subscribe({
      next: (i) => {
        items.push(i);
        if (items.length === Math.floor(n / 4)) event("cut");
      },
      complete: resolve,
      error: reject,
    });
  });
  for (let i = 0; i < n; i += 1) {
    await within(`sending message ${i}`, connection.send("SendMessage", "ana", `m${i}`));
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await within("the stream's end", streamed, 60000);
  assert.deepEqual(items, [...Array(n).keys()], "every item once, in order");
  for (let i = 0; i < n; i += 1) {
    assert.deepEqual(await received.next(`message ${i}`), ["ana", `m${i}`]);
  }
  // Nothing twice: a call after them all, then nothing more had come.
  assert.equal(await within("Echo", connection.invoke("Echo", "last")), "last");
  assert.deepEqual(received.items, [], "messages received twice");
  assert.equal(connection.connectionId, id, "the same connection");
  assert.equal(reconnecting, 0, "no reconnect the application sees");
  assert.ok(wire.sockets >= 2, `the socket was replaced (${wire.sockets} sockets)`);
  assert.ok(wire.records.some((r) => r.type === 9), "the server's Sequence after the reattach");
  await connection.stop();
};

const run = scenarios[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  await run(...rest);
  console.log("ok");
  process.exit(0);
} catch (error) {
  console.error(`scenario ${scenario} failed: ${error.stack || error}`);
  process.exit(1);
}
