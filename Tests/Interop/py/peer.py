"""A py-libp2p peer for p2pchat's interop tests.

Speaks TCP + Noise (or TLS with --security tls) + Yamux only, serves ping, identify (py-libp2p's defaults),
perf (/perf/1.0.0) and an echo protocol, and can dial a peer to run ping,
identify, echo, many concurrent echo streams or a perf measurement. Every stdout line is one JSON object; logs go to stderr.
The process always ends by itself: on --timeout, on stdin EOF (listen mode) or
when its dial action is done.
"""

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time

import multiaddr
import trio

from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.identify import ID as IDENTIFY_ID, parse_identify_response
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.perf import PerfService
from libp2p.peer.id import ID as PeerID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID, Transport as NoiseTransport
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_ID, TLSTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID, Yamux

ECHO = TProtocol("/p2pchat/echo/1.0.0")
PING = TProtocol("/ipfs/ping/1.0.0")

log = logging.getLogger("peer")


def emit(**fields):
    print(json.dumps(fields), flush=True)


def pattern(count: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes: SHA-256 in counter mode."""
    out = bytearray()
    counter = 0
    while len(out) < count:
        out += hashlib.sha256(seed.to_bytes(8, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:count])


async def read_chunk(stream, n=65536) -> bytes:
    try:
        return await stream.read(n)
    except StreamEOF:
        return b""


async def read_exactly(stream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await read_chunk(stream, n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


async def echo_handler(stream) -> None:
    try:
        while True:
            chunk = await read_chunk(stream)
            if not chunk:
                break
            await stream.write(chunk)
        await stream.close()
    except Exception as error:  # a reset by the remote ends the echo
        log.info("echo handler ended: %r", error)
        await stream.reset()


def make_host(seed: str | None, mdns: bool = False, security: str = "noise", transport: str = "tcp", key: str = "ed25519"):
    if key == "secp256k1":
        key_pair = create_secp256k1_key_pair(bytes.fromhex(seed) if seed else None)
    elif seed:
        key_pair = create_new_key_pair(bytes.fromhex(seed))
    else:
        key_pair = create_new_key_pair()
    if security == "tls":
        # ALPN offers only "libp2p": the muxer is then chosen by multistream-select.
        sec_opt = {TLS_ID: TLSTransport(key_pair)}
    else:
        sec_opt = {NOISE_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec_opt,
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        enable_mDNS=mdns,
        # --transport ws: py-libp2p's WebSocket transport only (listens and dials /ws).
        enable_tcp=transport == "tcp",
        enable_websocket=transport == "ws",
    )
    host.set_stream_handler(ECHO, echo_handler)
    return host


async def identify(host, peer_id) -> dict:
    stream = await host.new_stream(peer_id, [IDENTIFY_ID])
    data = bytearray()
    while True:
        chunk = await read_chunk(stream)
        if not chunk:
            break
        data += chunk
    await stream.close()
    message = parse_identify_response(bytes(data))
    key_ok = False
    if message.public_key:
        key_ok = PeerID.from_pubkey(deserialize_public_key(message.public_key)) == peer_id
    # The signed peer record: verified by py-libp2p's own envelope code.
    record_ok, record_addrs = False, []
    if message.HasField("signedPeerRecord"):
        from libp2p.peer.envelope import consume_envelope

        try:
            _, record = consume_envelope(message.signedPeerRecord, "libp2p-peer-record")
            record_ok = record.peer_id == peer_id
            record_addrs = [str(a) for a in record.addrs]
        except Exception as error:  # a bad record is reported, not fatal
            emit(event="record_error", error=str(error))
    return {
        "peer": peer_id.to_base58(),
        "agent": message.agent_version,
        "protocol_version": message.protocol_version,
        "protocols": list(message.protocols),
        "listen_addrs": [str(multiaddr.Multiaddr(a)) for a in message.listen_addrs],
        "observed_addr": str(multiaddr.Multiaddr(message.observed_addr)) if message.observed_addr else None,
        "public_key_ok": key_ok,
        "record_ok": record_ok,
        "record_addrs": record_addrs,
    }


async def do_ping(host, peer_id, count: int) -> None:
    stream = await host.new_stream(peer_id, [PING])
    for _ in range(count):
        payload = pattern(32, int(time.time_ns()))
        start = time.perf_counter()
        await stream.write(payload)
        back = await read_exactly(stream, 32)
        rtt = (time.perf_counter() - start) * 1000
        if back != payload:
            raise RuntimeError("ping payload mismatch")
        emit(event="ping", rtt_ms=rtt)
    await stream.close()


async def echo_once(host, peer_id, size: int, seed: int, chunk: int = 65536) -> bool:
    data = pattern(size, seed)
    stream = await host.new_stream(peer_id, [ECHO])
    received = bytearray()

    async def reader():
        while True:
            piece = await read_chunk(stream)
            if not piece:
                return
            received.extend(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for offset in range(0, size, chunk):
            await stream.write(data[offset : offset + chunk])
        await stream.close_write()
    return bytes(received) == data


async def run_dial(host, args) -> None:
    target = multiaddr.Multiaddr(args.target)
    info = info_from_p2p_addr(target)
    await host.connect(info)
    emit(event="connected", peer=info.peer_id.to_base58())
    if args.action == "ping":
        await do_ping(host, info.peer_id, args.count)
    elif args.action == "identify":
        emit(event="identified", **(await identify(host, info.peer_id)))
    elif args.action == "echo":
        start = time.perf_counter()
        ok = await echo_once(host, info.peer_id, args.bytes, 1)
        seconds = time.perf_counter() - start
        emit(event="echo", bytes=args.bytes, ok=ok, seconds=seconds, mb_per_s=args.bytes / seconds / 1e6)
        if not ok:
            raise RuntimeError("echoed bytes differ")
    elif args.action == "perf":
        perf = PerfService(host, perf_init(args))
        await perf.start()
        start = time.perf_counter()
        final = None
        async for output in perf.measure_performance(target, args.upload, args.download):
            if output["type"] == "final":
                final = output
        seconds = time.perf_counter() - start
        if final is None:
            raise RuntimeError("perf gave no final result")
        emit(
            event="perf",
            upload_bytes=final["upload_bytes"],
            download_bytes=final["download_bytes"],
            seconds=seconds,
            bytes_per_second=(final["upload_bytes"] + final["download_bytes"]) / seconds,
        )
    elif args.action == "streams":
        results = []

        async def one(index):
            results.append(await echo_once(host, info.peer_id, args.bytes + index, index + 1, 4096))

        async with trio.open_nursery() as nursery:
            for index in range(args.count):
                nursery.start_soon(one, index)
        ok = len(results) == args.count and all(results)
        emit(event="streams", count=len(results), ok=ok)
        if not ok:
            raise RuntimeError("some streams failed")


def perf_init(args) -> dict:
    """PerfService options: --block-size sets its write (and read) block size; else py-libp2p's default."""
    block_size = getattr(args, "block_size", None)
    return {"write_block_size": block_size} if block_size else {}


async def run_pubsub(host, args) -> None:
    """Chat on a topic: stdin lines are published, messages printed as JSON."""
    from libp2p.pubsub.floodsub import FloodSub, PROTOCOL_ID as FLOODSUB_ID
    from libp2p.pubsub.gossipsub import (
        GossipSub, PROTOCOL_ID as MESHSUB_10, PROTOCOL_ID_V11 as MESHSUB_11, PROTOCOL_ID_V12 as MESHSUB_12,
    )
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    if args.router == "floodsub":
        router = FloodSub(protocols=[FLOODSUB_ID])
    else:
        router = GossipSub(
            protocols=[MESHSUB_12, MESHSUB_11, MESHSUB_10, FLOODSUB_ID],
            degree=6,
            degree_low=5,
            degree_high=12,
            heartbeat_interval=1,
        )
    pubsub = Pubsub(host, router)
    async with background_trio_service(pubsub):
        # GossipSub runs its heartbeat as a service; FloodSub has none.
        router_service = background_trio_service(router) if args.router == "gossipsub" else contextlib.nullcontext()
        async with router_service:
            await pubsub.wait_until_ready()
            subscription = await pubsub.subscribe(args.topic)
            addr = host.get_addrs()[0]
            emit(event="listening", peer=host.get_id().to_base58(), addr=str(addr))
            for target in args.connect or []:
                info = info_from_p2p_addr(multiaddr.Multiaddr(target))
                await host.connect(info)
                emit(event="connected", peer=info.peer_id.to_base58())

            async def receive():
                while True:
                    message = await subscription.get()
                    sender = PeerID(message.from_id).to_base58() if message.from_id else None
                    emit(event="message", topic=args.topic, **{"from": sender}, text=message.data.decode("utf-8", "replace"))

            async def publish_lines():
                async for line in stdin_lines():
                    if line:
                        await pubsub.publish(args.topic, line)
                        emit(event="published", text=line.decode())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await publish_lines()
                nursery.cancel_scope.cancel()


async def stdin_lines():
    """Stdin's lines (bytes, without the newline) until EOF."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    pending = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line


async def wait_for_stdin_eof() -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(4096):
        pass


async def main(args) -> None:
    host = make_host(args.seed, mdns=args.mode == "mdns", security=args.security, transport=args.transport, key=args.key)
    suffix = "/ws" if args.transport == "ws" else ""
    listen = [multiaddr.Multiaddr(f"/ip4/{args.ip}/tcp/{args.port}{suffix}")]
    async with host.run(listen_addrs=listen):
        await PerfService(host, perf_init(args)).start()
        if args.mode == "mdns":
            addr = host.get_addrs()[0]
            emit(event="listening", peer=host.get_id().to_base58(), addr=str(addr))
            reported = set()

            async def report_discoveries():
                while True:
                    for peer_id in host.get_peerstore().peer_ids():
                        if peer_id != host.get_id() and peer_id not in reported:
                            addrs = host.get_peerstore().addrs(peer_id)
                            if addrs:
                                reported.add(peer_id)
                                emit(event="discovered", peer=peer_id.to_base58(), addrs=[str(a) for a in addrs])
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_discoveries)
                await wait_for_stdin_eof()
                nursery.cancel_scope.cancel()
        elif args.mode == "pubsub":
            await run_pubsub(host, args)
        elif args.mode == "listen":
            addr = host.get_addrs()[0]
            emit(event="listening", peer=host.get_id().to_base58(), addr=str(addr))
            await wait_for_stdin_eof()
        else:
            await run_dial(host, args)
        finish()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--seed", help="hex 32-byte seed for a deterministic Ed25519 key (secp256k1: the secret)")
    parser.add_argument("--key", choices=["ed25519", "secp256k1"], default="ed25519", help="identity key type, before the mode")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--security", choices=["noise", "tls"], default="noise", help="before the mode")
    parser.add_argument("--transport", choices=["tcp", "ws"], default="tcp", help="listen and dial over TCP or /ws")
    sub = parser.add_subparsers(dest="mode", required=True)
    listen = sub.add_parser("listen")
    listen.add_argument("--port", type=int, default=0)
    listen.add_argument("--ip", default="127.0.0.1")
    listen.add_argument("--timeout", type=float, default=60)
    listen.add_argument("--block-size", type=int, help="perf: the served PerfService's write_block_size")
    mdns = sub.add_parser("mdns")
    mdns.add_argument("--timeout", type=float, default=60)
    mdns.add_argument("--port", type=int, default=0)
    mdns.add_argument("--ip", default="0.0.0.0")
    chat = sub.add_parser("pubsub")
    chat.add_argument("--router", choices=["gossipsub", "floodsub"], default="gossipsub")
    chat.add_argument("--topic", default="lobby")
    chat.add_argument("--connect", action="append")
    chat.add_argument("--timeout", type=float, default=60)
    chat.add_argument("--port", type=int, default=0)
    chat.add_argument("--ip", default="127.0.0.1")
    dial = sub.add_parser("dial")
    dial.add_argument("target")
    dial.add_argument("action", choices=["ping", "identify", "echo", "streams", "perf"])
    dial.add_argument("--count", type=int, default=3)
    dial.add_argument("--bytes", type=int, default=1024 * 1024)
    dial.add_argument("--upload", type=int, default=0, help="perf: bytes to upload")
    dial.add_argument("--download", type=int, default=0, help="perf: bytes to download")
    dial.add_argument("--block-size", type=int, help="perf: the client PerfService's write_block_size")
    dial.add_argument("--timeout", type=float, default=60)
    return parser.parse_args()


_run = {"scope": None, "finished": False}


def finish() -> None:
    """Ends the script's run now, as finished: cancels what is still running (a host's
    background tasks), which would otherwise hold the process."""
    _run["finished"] = True
    _run["scope"].cancel()


def run_script(main, parse_args) -> None:
    """Runs a peer script's trio `main(args)` for at most `args.timeout` seconds (then
    fails with TimeoutError), every failure reported as one JSON line. `main` ends by
    returning or by calling `finish()`."""
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("PEER_LOG", "WARNING"))
    arguments = parse_args()

    async def bounded(args) -> None:
        with trio.move_on_after(args.timeout) as scope:
            _run["scope"] = scope
            await main(args)
        # On the deadline (some py-libp2p services swallow the cancellation and return).
        if scope.cancel_called and not _run["finished"]:
            raise TimeoutError(f"{getattr(args, 'mode', 'the script')} did not finish within {args.timeout} s")

    try:
        trio.run(bounded, arguments)
    except BaseException as error:  # report every failure as one JSON line
        emit(event="error", message=repr(error))
        sys.exit(1)


if __name__ == "__main__":
    run_script(main, parse_args)
