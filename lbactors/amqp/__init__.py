"""The wire layer: a trio AMQP 0-9-1 client on pamqp (``connection``, ``protocol``, ``errors``;
``broker_url``: one broker or several, as oslo's transport_url) and oslo.messaging's envelope
codec (``oslo``)."""

from lbactors.amqp.connection import (
    Channel,
    Confirmation,
    Connection,
    Consumer,
    Delivery,
    open_connection,
    reconnect_delays,
)
from lbactors.amqp.errors import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    FrameError,
    PublishNacked,
    PublishReturned,
)

__all__ = [
    "AMQPError",
    "AuthenticationError",
    "Channel",
    "ChannelClosed",
    "Confirmation",
    "Connection",
    "ConnectionClosed",
    "Consumer",
    "Delivery",
    "FrameError",
    "PublishNacked",
    "PublishReturned",
    "open_connection",
    "reconnect_delays",
]
