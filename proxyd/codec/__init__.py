"""Sans-IO protocol codecs: bytes in, :mod:`proxyd.events` out, queued bytes out.

Strategy: every codec has the shape of ``h2.connection.H2Connection`` so the network layer drives all
of them the same way. A *server-side* codec (frontend) has this interface::

    receive_data(data: bytes) -> list[event]      # raises nothing; fatal errors become
                                                  # ConnectionTerminated(remote=False) and the
                                                  # codec queues its GOAWAY / closes
    initiate() -> None                            # queue the connection preface / SETTINGS
    send_response(stream_id, status: int, headers: list, end_stream=False)
    send_informational(stream_id, status: int, headers: list)   # 1xx, where the protocol can
    send_data(stream_id, data: bytes, end_stream=False)         # len(data) <= available_window
    send_trailers(stream_id, headers: list)                     # ends the stream
    end_stream(stream_id)                         # empty DATA with END_STREAM / FIN
    reset_stream(stream_id, error_code: int)      # error codes are HTTP/2 codes; SPDY maps them
    available_window(stream_id) -> int            # bytes send_data may take now (min of stream
                                                  # and connection windows, capped to one frame
                                                  # burst the codec can frame)
    acknowledge(stream_id, n: int)                # the bytes of DataReceived.flow_length were
                                                  # consumed: open the receive windows again
    goaway(error_code=0)                          # graceful: last good stream id = highest seen
    data_to_send() -> bytes                       # everything queued, then cleared
    release() -> None                             # the connection is lost: drop what would keep
                                                  # the codec in a reference cycle
    open_streams -> int                           # streams not yet closed both ways
    wants_close -> bool                           # the connection should be closed after
                                                  # flushing data_to_send()

Headers are lists of ``(name, value)`` byte tuples with lower-case names; pseudo-headers never
appear in them (they are fields of the events). Error codes use HTTP/2 numbering
(``PROTOCOL_ERROR`` 1, ``INTERNAL_ERROR`` 2, ``REFUSED_STREAM`` 7, ``CANCEL`` 8,
``ENHANCE_YOUR_CALM`` 11); the SPDY codec maps them to its own status codes.
"""

PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
STREAM_CLOSED = 5
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11
