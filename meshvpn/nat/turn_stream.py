"""TURN on a byte stream (TCP or TLS to the relay): how frames and the opening proof are laid out.

A host whose UDP is blocked still reaches the relay's TURN server over a
stream, and its allocation's relayed address is UDP as usual (RFC 8656
allows TCP/TLS between client and server).  On a stream each frame
delimits itself (RFC 8656 11.4/12.5):

 - a STUN message: first two bits 0, its length at bytes 2-3, 20 + length bytes;
 - ChannelData: first byte 0x40-0x4F, its length at bytes 2-3, 4 + length
   bytes padded to a multiple of 4.

The stream is TLS 1.3 (the link layer's throwaway certificates: TLS only
encrypts).  Before any TURN frame both ends prove their node identity on
*this* TLS session, by signing its RFC 5705 exporter value (L{EXPORTER_LABEL};
a man in the middle terminating TLS on both sides sees two different
values), so an allocation over a stream is bound to a node id exactly as a
UDP one is (the UDP client gets its credentials over its authenticated
datagram link, which a UDP-blocked host cannot have), and the client knows
it reached the relay it pinned:

    relay  -> client   "MVT2" | challenge (32 random bytes) | relay's Ed25519
                       identity public key (32) | its signature (64) of
                       RELAY_CONTEXT | exporter | challenge
    client -> relay    Ed25519 identity public key (32) | signature (64) of
                       PROOF_CONTEXT | exporter | challenge | relay's node id
    relay  -> client   length (2) | a signalling CREDS message (TURN REST
                       credentials for that node id, L{signal_wire.encodeCreds})

Every parser here checks every length and raises L{StreamFrameError}; the
caller closes that one connection.  The deframer never holds more than one
frame (at most L{MAX_FRAME} bytes) plus what arrived with it.
"""

import struct

from meshvpn.errors import MeshVPNError
from meshvpn.nat import signal_wire as sw
from meshvpn.nat import stun

HELLO_MAGIC = b"MVT2"
CHALLENGE_LEN = 32
PUBLIC_KEY_LEN, SIGNATURE_LEN = 32, 64
PROOF_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN
HELLO_LEN = len(HELLO_MAGIC) + CHALLENGE_LEN + PROOF_LEN
PROOF_CONTEXT = b"meshvpn turn-over-stream v2 client proof\x00"
RELAY_CONTEXT = b"meshvpn turn-over-stream v2 relay proof\x00"
EXPORTER_LABEL = b"EXPORTER-meshvpn-turn-stream-v2"
EXPORTER_LEN = 32
MAX_CREDS = 2 + 1 + 4 + 2 * 256
CHANNEL_FIRST = range(0x40, 0x50)
MAX_FRAME = stun.MAX_MESSAGE_LENGTH  # 65552: the largest STUN message; ChannelData (4 + 65535 + pad) fits too


class StreamFrameError(MeshVPNError):
    """The stream carried something that is not a TURN frame (or not the expected proof)."""


def frameLength(header):
    """
    @param header: at least the first 4 bytes of a frame.
    @return: the frame's whole length on the stream (ChannelData padding included).
    @raise StreamFrameError: the first byte starts neither STUN nor ChannelData.
    """
    first = header[0]
    (length,) = struct.unpack_from("!H", header, 2)
    if first in CHANNEL_FIRST:
        return 4 + length + (-length % 4)
    if first >> 6 == 0:
        if length % 4:
            raise StreamFrameError(f"STUN length {length} is not a multiple of 4")
        return stun.HEADER_LENGTH + length
    raise StreamFrameError(f"frame starts with 0x{first:02x}: neither STUN nor ChannelData")


def channelDataPayload(frame):
    """The datagram form of a ChannelData frame: the stream's padding removed."""
    (length,) = struct.unpack_from("!H", frame, 2)
    return bytes(frame[: 4 + length])


def padChannelData(data):
    """ChannelData as sent on a stream: padded to a multiple of 4 (RFC 8656 12.5)."""
    return data + bytes(-len(data) % 4)


class Deframer:
    """
    Cuts a byte stream into frames.  C{feed} returns the complete frames
    (STUN messages as they are, ChannelData without its padding); it
    raises L{StreamFrameError} on the first bad frame, after which the
    caller closes the stream.
    """

    def __init__(self, maxFrame=MAX_FRAME):
        self.maxFrame = maxFrame
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            n = frameLength(self._buf)
            if n > self.maxFrame:
                raise StreamFrameError(f"frame of {n} bytes is more than {self.maxFrame}")
            if len(self._buf) < n:
                break
            frame = bytes(self._buf[:n])
            del self._buf[:n]
            if frame[0] in CHANNEL_FIRST:
                out.append(channelDataPayload(frame))
            else:
                if not stun.isStun(frame):
                    raise StreamFrameError("malformed STUN header (magic cookie)")
                out.append(frame)
        return out

    @property
    def buffered(self):
        return len(self._buf)


def tlsBinding(transport):
    """
    The TLS exporter value of the session C{transport} runs on (both ends
    compute the same one; a man in the middle gets two different ones).
    @raise StreamFrameError: not a TLS transport, or no exporter yet.
    """
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    try:
        value = handle.export_keying_material(EXPORTER_LABEL, EXPORTER_LEN)
    except Exception:
        value = None
    if not value or len(value) != EXPORTER_LEN:
        raise StreamFrameError("no TLS exporter on this stream: TURN streams run on TLS only")
    return value


def relayMessage(binding, challenge):
    return RELAY_CONTEXT + binding + challenge


def encodeHello(challenge, publicKey, signature):
    if len(challenge) != CHALLENGE_LEN:
        raise ValueError("challenge must be 32 bytes")
    return HELLO_MAGIC + challenge + encodeProof(publicKey, signature)


def parseHello(data):
    """@return: C{(challenge, relayPublicKey, relaySignature)}.  @raise StreamFrameError: not a hello."""
    if len(data) != HELLO_LEN:
        raise StreamFrameError(f"hello of {len(data)} bytes (want {HELLO_LEN})")
    if data[:4] != HELLO_MAGIC:
        raise StreamFrameError("hello without the MVT2 magic: not a MeshVPN TURN stream (or an older one)")
    end = len(HELLO_MAGIC) + CHALLENGE_LEN
    return (bytes(data[4:end]),) + parseProof(data[end:])


def proofMessage(binding, challenge, relayNodeId):
    return PROOF_CONTEXT + binding + challenge + relayNodeId


def encodeProof(publicKey, signature):
    if len(publicKey) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise ValueError("bad key or signature length")
    return publicKey + signature


def parseProof(data):
    """@return: C{(publicKey, signature)}.  @raise StreamFrameError."""
    if len(data) != PROOF_LEN:
        raise StreamFrameError(f"proof of {len(data)} bytes (want {PROOF_LEN})")
    return bytes(data[:PUBLIC_KEY_LEN]), bytes(data[PUBLIC_KEY_LEN:])


def encodeCredsFrame(lifetime, username, password):
    creds = sw.encodeCreds(lifetime, username, password)
    return struct.pack("!H", len(creds)) + creds


def credsFrameLength(head):
    """@param head: the first 2 bytes.  @return: the whole frame's length.  @raise StreamFrameError."""
    (n,) = struct.unpack_from("!H", head)
    if not 7 <= n <= MAX_CREDS:
        raise StreamFrameError(f"credentials of {n} bytes")
    return 2 + n


def parseCredsFrame(data):
    """@return: C{(lifetime, username, password)}.  @raise StreamFrameError."""
    if len(data) < 2 or credsFrameLength(data) != len(data):
        raise StreamFrameError("credentials frame length does not match")
    try:
        msg = sw.parseRelayMessage(data[2:])
    except sw.SignalParseError as e:
        raise StreamFrameError(f"bad credentials: {e}") from None
    if msg[0] != sw.CREDS:
        raise StreamFrameError("expected credentials")
    return msg[1], msg[2], msg[3]
