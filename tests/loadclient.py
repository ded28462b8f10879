"""
A load client for the kill test: CONCURRENCY connections, each sending chat calls one
after another, h11 reading each answer; one line "ok REQUEST_ID" on stdout (flushed) for
every answer that arrived whole, as the client saw it. A broken connection is
reconnected (the proxy may be down: it is tried again after 10 ms). Runs until SIGTERM.

    python tests/loadclient.py PORT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import h11

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = [
    ("Host", "proxy"),
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-load-test"),
    ("X-ModelTrack-Team", "load"),
    ("Content-Length", str(len(BODY))),
]


async def call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: h11.Connection) -> str | None:
    """
    One call on an open connection: the request id if its answer arrived whole.
    """
    writer.write(connection.send(h11.Request(method="POST", target="/v1/chat/completions", headers=HEADERS)))
    writer.write(connection.send(h11.Data(data=BODY)))
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()
    request_id = None
    status = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            connection.receive_data(data)  # b"" is the end of the connection
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            request_id = dict(event.headers).get(b"x-modeltrack-request-id", b"").decode()
        elif isinstance(event, h11.EndOfMessage):
            return request_id if status == 200 else None
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def worker(port: int) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        connection = h11.Connection(h11.CLIENT)
        try:
            while True:
                request_id = await call(reader, writer, connection)
                if request_id is None:
                    break
                sys.stdout.write(f"ok {request_id}\n")
                sys.stdout.flush()
                connection.start_next_cycle()
        except (OSError, h11.ProtocolError):
            pass
        finally:
            writer.close()


async def main(port: int, concurrency: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    workers = [asyncio.create_task(worker(port)) for _ in range(concurrency)]
    await stop.wait()
    for task in workers:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
