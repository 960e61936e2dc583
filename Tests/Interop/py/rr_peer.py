"""py-libp2p 0.8.1's request_response, for p2pchat's interop tests.

  rr_peer.py serve                      serve /p2pchat/rr/1.0.0 (BytesCodec): the response is
                                        b"py:" + the request; a request b"slow" stalls past the
                                        timeout; emits {"event": "listening", ...}
  rr_peer.py request TARGET HEX [...]   send each HEX request to TARGET, one line per request
                                        ({"event": "reply", "hex": ...} or {"event": "reply", "error": ...})

Every stdout line is one JSON object. The process ends by itself (--timeout, stdin EOF).
"""

import argparse
import multiaddr
import trio

from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.request_response import BytesCodec, RequestResponse, RequestResponseConfig

from peer import emit, finish, make_host, run_script, wait_for_stdin_eof

PROTOCOL = TProtocol("/p2pchat/rr/1.0.0")


async def handle(request: bytes, context) -> bytes:
    if request == b"slow":
        await trio.sleep(3600)
    return b"py:" + request


async def main(args) -> None:
    host = make_host(None)
    listen = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/0")]
    async with host.run(listen_addrs=listen):
        service = RequestResponse(host)
        config = RequestResponseConfig(timeout=args.request_timeout, max_request_size=args.max_request)
        if args.mode == "serve":
            service.set_handler(PROTOCOL, handle, BytesCodec(), config)
            emit(event="listening", peer=host.get_id().to_base58(), addr=str(host.get_addrs()[0]))
            await wait_for_stdin_eof()
        else:
            emit(event="started", peer=host.get_id().to_base58())
            info = info_from_p2p_addr(multiaddr.Multiaddr(args.target))
            await host.connect(info)
            for text in args.requests:
                try:
                    response = await service.send_request(
                        info.peer_id, [PROTOCOL], bytes.fromhex(text), BytesCodec(), config)
                    emit(event="reply", hex=response.hex())
                except Exception as error:  # reported for the test to check
                    emit(event="reply", error=type(error).__name__)
        finish()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--request-timeout", type=float, default=10)
    parser.add_argument("--max-request", type=int, default=1_048_576)
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve")
    request = sub.add_parser("request")
    request.add_argument("target")
    request.add_argument("requests", nargs="+")
    return parser.parse_args()


if __name__ == "__main__":
    run_script(main, parse_args)
