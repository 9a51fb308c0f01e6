"""A TCP forwarder for the store suites: <listen host>:<listen> -> <host>:<port>.

Killing it cuts every connection through it, as a network fault would.
Usage: python3 tcp-proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT [LISTEN_HOST]
LISTEN_HOST defaults to 127.0.0.1 (test-cluster.R listens on a veth address).
"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(listen, host, port, listen_host):
    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(handle, listen_host, listen, reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"))
