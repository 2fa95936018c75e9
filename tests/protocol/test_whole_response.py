"""Protocol tests of WHOLE (a response whose head, body and end came in one backend read) against
the three-step path (HEAD, DATA, END) as the relay really runs it: a failure while its commands
run still ends the stream."""

import h2.events
import pytest

from proxyd.errors import Refused


def _refusing_head_once(codec, monkeypatch):
    """Make the client codec's writer refuse the next response head (as it refuses an unsafe
    one: ``Refused("unsafe_response")``)."""
    original = codec.send_response
    calls = []

    def refuse(stream_id, status, headers, end_stream=False):
        calls.append(stream_id)
        if len(calls) == 1:
            raise Refused("unsafe_response", "test: the writer refused the head")
        return original(stream_id, status, headers, end_stream)
    monkeypatch.setattr(codec, "send_response", refuse)
    return calls


@pytest.mark.parametrize("whole", [False, True], ids=["three-reads", "one-read"])
def test_writer_refusing_the_head_ends_the_stream_in_one_read_too(proxy, monkeypatch, whole):
    """Every stream ends (relay docstring): when the client codec refuses the response head, the
    three-step path fails the stream in RESPONDING (reset, backend dropped, stream forgotten). A
    response that came in one read (WHOLE) took the machine to DONE before the relay ran RESPOND,
    so the relay's crash handler saw DONE and did nothing: no reset, the backend connection held
    forever, the stream never left the frontend."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    backend.requests()
    calls = _refusing_head_once(client.protocol.codec, monkeypatch)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    if whole:
        backend.respond(head + b"hello")
    else:
        backend.respond(head)
        backend.respond(b"hello")
    assert calls == [sid]
    resets = [e for e in client.pump() if isinstance(e, h2.events.StreamReset)]
    assert [e.stream_id for e in resets] == [sid]
    assert not client.protocol.streams
    assert backend.transport.disconnecting  # dropped, not left attached to a dead stream
