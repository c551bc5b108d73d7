#!/usr/bin/env python3
"""A minimal HTTP/1.1 keep-alive receiver for bench/webhooks.sh.

Answers every request 200 at once. For a POST whose JSON body has "t"
(milliseconds since the epoch, set by the sender), records now - t.
GET /stats answers {"count": N, "lat": [...]} and resets the latencies.
GET /wait/N answers {"count": C, "at": T} once C >= N requests have
arrived, T being the arrival time (seconds since the epoch) of the request
that made the count reach N (or the time of asking if it already had):
the bench waits on it instead of polling, so it takes no CPU from the
server it measures.
Usage: receiver.py PORT
"""
import asyncio, json, sys, time

count = 0
lat = []
waiters = []  # (n, transport)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


def answer(transport, at):
    payload = json.dumps({"count": count, "at": at}).encode()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)


class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        global count
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if head.startswith("GET /wait/"):
                n = int(head.split(" ")[1][len("/wait/"):])
                if count >= n:
                    answer(self.t, time.time())
                else:
                    waiters.append((n, self.t))
                continue
            if head.startswith("GET /stats"):
                payload = json.dumps({"count": count, "lat": lat}).encode()
                lat.clear()
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
                continue
            count += 1
            if waiters:
                now = time.time()
                for w in [w for w in waiters if count >= w[0]]:
                    waiters.remove(w)
                    answer(w[1], now)
            if body[:1] == b"{":
                try:
                    sent = json.loads(body).get("t")
                    if sent is not None:
                        lat.append(time.time() * 1000 - float(sent))
                except ValueError:
                    pass
            self.t.write(OK)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
