// Benchmark baseline: the chat room on Node's http module and the `ws` package.
//
// This server exists only so bench/compare.py has something ordinary to compare the
// `chat` example against; it is the straightforward `ws` pattern, not a recommendation.
//
//   node server.js --addr 127.0.0.1:0
//
// Protocol: /api/Chat?username=NAME is the WebSocket (400 without a username); every
// text message is broadcast to everyone, the sender included, as "NAME: message".
// ws's defaults apply (no permessage-deflate on the server); Node's http server sets
// TCP_NODELAY on its sockets by default.
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function parseArgs(argv) {
  let addr = '127.0.0.1:8080';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--addr') {
      if (i + 1 >= argv.length) fail('--addr needs HOST:PORT');
      addr = argv[++i];
    } else if (arg === '-h' || arg === '--help') {
      console.log('usage: node server.js [--addr HOST:PORT]   (default 127.0.0.1:8080)');
      process.exit(0);
    } else {
      fail(`unknown argument ${JSON.stringify(arg)}; try --help`);
    }
  }
  const colon = addr.lastIndexOf(':');
  if (colon < 0) fail(`invalid --addr ${JSON.stringify(addr)}`);
  let host = addr.slice(0, colon);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(addr.slice(colon + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    fail(`invalid port in --addr ${JSON.stringify(addr)}`);
  }
  return { host, port };
}

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

function reject(socket, status, reason, body) {
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\n` +
      'Content-Type: text/plain; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
  );
}

const { host, port } = parseArgs(process.argv.slice(2));

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/api/Chat') {
    res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end('this is a WebSocket endpoint: connect to /api/Chat?username=NAME\n');
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end('not found\n');
  }
});

const wss = new WebSocketServer({ noServer: true });

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/api/Chat') {
    reject(socket, 404, 'Not Found', 'not found\n');
    return;
  }
  const username = url.searchParams.get('username');
  if (!username || username.trim() === '') {
    reject(socket, 400, 'Bad Request', 'missing username: connect to /api/Chat?username=NAME\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = `${username}: ${data.toString('utf8')}`;
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(text);
      }
    });
  });
});

server.listen(port, host, () => {
  const bound = server.address();
  const shown = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  process.stdout.write(
    `Chat server running. Open http://${shown}:${bound.port}/chat.htm in a browser.\n`,
  );
});

// The benchmark stops servers with SIGTERM; an overloaded event loop would never get to a
// graceful close, so leave at once.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
