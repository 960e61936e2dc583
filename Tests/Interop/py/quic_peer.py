"""A plain QUIC v1 peer (aioquic, as pinned for py-libp2p) for QUICTests: the
Swift QUIC core against an independent stack, before libp2p is layered on.

    quic_peer.py serve [--retry]    echo every stream; prints {"event": "listening", "port": N}
    quic_peer.py connect PORT TEXT  opens a stream, sends TEXT with FIN, prints what comes back

ALPN is "libp2p"; both sides present a throwaway self-signed P-256 certificate
and accept the other's (the libp2p certificate check is not this test's concern).
One JSON object per line on stdout.
"""

import asyncio
import datetime
import json
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def emit(**fields):
    print(json.dumps(fields), flush=True)


def configuration(is_client):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aioquic")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    config = QuicConfiguration(is_client=is_client, alpn_protocols=["libp2p"], max_datagram_frame_size=None)
    config.certificate = certificate
    config.private_key = key
    config.verify_mode = ssl.CERT_NONE
    return config


class Echo(QuicConnectionProtocol):
    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            emit(event="handshake", alpn=event.alpn_protocol)
        elif isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            self.transmit()
            if event.end_stream:
                emit(event="echoed", stream=event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            emit(event="closed", code=event.error_code, reason=event.reason_phrase)


async def run_server(retry, seconds):
    server = await serve("127.0.0.1", 0, configuration=configuration(False), create_protocol=Echo, retry=retry)
    emit(event="listening", port=server._transport.get_extra_info("sockname")[1])
    await asyncio.sleep(seconds)
    server.close()


async def run_client(port, text):
    async with connect("127.0.0.1", port, configuration=configuration(True)) as client:
        reader, writer = await client.create_stream()
        writer.write(text.encode())
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 20)
        emit(event="reply", text=data.decode(errors="replace"))
        client.close()
        await client.wait_closed()


def main():
    try:
        if sys.argv[1] == "serve":
            asyncio.run(run_server("--retry" in sys.argv, 60))
        else:
            asyncio.run(run_client(int(sys.argv[2]), sys.argv[3]))
    except Exception as error:  # reported to the test, which fails with it
        emit(event="error", error=repr(error))
        sys.exit(1)


main()
