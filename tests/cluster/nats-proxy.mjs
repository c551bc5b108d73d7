// A TCP proxy between one node and NATS, so that the cluster test can cut
// that node alone from NATS: SIGUSR2 cuts (every connection through it is
// closed and new ones are refused), SIGHUP heals (it listens again).
// (SIGUSR1 is Node's debugger signal.)
// Usage: node nats-proxy.mjs <listen port> <NATS port>
import net from 'node:net';

const [listenPort, natsPort] = process.argv.slice(2).map(Number);
const open = new Set();
let server = null;

function listen() {
  server = net.createServer((client) => {
    const upstream = net.connect(natsPort, '127.0.0.1');
    open.add(client);
    open.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(listenPort, '127.0.0.1');
}

process.on('SIGUSR2', () => {
  if (!server) return;
  server.close();
  server = null;
  for (const socket of open) socket.destroy();
  open.clear();
});
process.on('SIGHUP', () => {
  if (!server) listen();
});
process.on('SIGTERM', () => process.exit(0));
// Signal handlers alone do not keep Node running while cut.
setInterval(() => {}, 1 << 30);
listen();
