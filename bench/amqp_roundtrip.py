"""Raw AMQP round trips per second: publish with confirm → consume → ack, our trio client
and aio-pika side by side in one run.

    python -m bench.amqp_roundtrip [--messages 50000] [--aiopika-messages 10000] [--window 512]
                                   [--prefetch 1000] [--size 64] [--trials 3]

Setup for both clients (as in ``amqp-client-notes.md`` §3): one connection, publishing channel
in confirm mode, consuming channel with ``basic.qos(prefetch)``, an exclusive auto-delete
queue, transient ``size``-byte bodies, at most ``window`` unconfirmed publishes in flight, and
the consumer acks every delivery on its own. A round trip counts once the message is
published, confirmed, delivered and acked; the rate is messages / wall time from the first
publish to the last ack and the last confirm. Prints one line per client, the ratio, and a
JSON line (medians over the trials).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import deque

import trio

from lbactors.amqp import open_connection

URL = "amqp://guest:guest@127.0.0.1:5672/"


async def ours(url: str, messages: int, window: int, prefetch: int, size: int) -> float:
    body = b"x" * size
    async with open_connection(url, client_name="bench.amqp_roundtrip") as conn:
        publisher = await conn.open_channel()
        await publisher.confirm_select()
        consumer_channel = await conn.open_channel()
        await consumer_channel.basic_qos(prefetch)
        queue, _, _ = await consumer_channel.queue_declare("", exclusive=True, auto_delete=True)
        consumer = await consumer_channel.basic_consume(queue)

        async def publish_all() -> None:
            in_flight: deque = deque()
            for _ in range(messages):
                in_flight.append(await publisher.publish("", queue, body))
                if len(in_flight) >= window:
                    await in_flight.popleft().wait()
            while in_flight:
                await in_flight.popleft().wait()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            received = 0
            async for delivery in consumer:
                await consumer_channel.ack(delivery.delivery_tag)
                received += 1
                if received == messages:
                    break
        elapsed = time.perf_counter() - started
    return messages / elapsed


async def aio_pika_rate(url: str, messages: int, window: int, prefetch: int, size: int) -> float:
    import aio_pika

    body = b"x" * size
    connection = await aio_pika.connect(url)
    async with connection:
        publisher = await connection.channel(publisher_confirms=True)
        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=prefetch)
        queue = await consumer_channel.declare_queue("", exclusive=True, auto_delete=True)
        done = asyncio.get_running_loop().create_future()
        received = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received == messages and not done.done():
                done.set_result(None)

        await queue.consume(on_message)
        exchange = publisher.default_exchange
        started = time.perf_counter()
        in_flight: deque = deque()
        for _ in range(messages):
            in_flight.append(
                asyncio.ensure_future(
                    exchange.publish(aio_pika.Message(body), routing_key=queue.name)
                )
            )
            if len(in_flight) >= window:
                await in_flight.popleft()
        while in_flight:
            await in_flight.popleft()
        await done
        elapsed = time.perf_counter() - started
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=URL)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--aiopika-messages", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--skip-aiopika", action="store_true")
    args = parser.parse_args()

    our_rates = []
    for _ in range(args.trials):
        rate = trio.run(ours, args.url, args.messages, args.window, args.prefetch, args.size)
        our_rates.append(rate)
        print(f"lbactors.amqp  {args.messages} round trips: {rate:,.0f}/s", flush=True)
    pika_rates = []
    if not args.skip_aiopika:
        for _ in range(args.trials):
            rate = asyncio.run(
                aio_pika_rate(
                    args.url, args.aiopika_messages, args.window, args.prefetch, args.size
                )
            )
            pika_rates.append(rate)
            print(f"aio-pika       {args.aiopika_messages} round trips: {rate:,.0f}/s", flush=True)

    our_median = statistics.median(our_rates)
    pika_median = statistics.median(pika_rates) if pika_rates else None
    ratio = our_median / pika_median if pika_median else None
    print(f"median: lbactors.amqp {our_median:,.0f}/s", end="")
    if pika_median and ratio:
        print(f", aio-pika {pika_median:,.0f}/s, ratio {ratio:.1f}x")
    else:
        print()
    print(
        json.dumps(
            {
                "bench": "amqp_roundtrip",
                "ours_per_s": round(our_median),
                "aio_pika_per_s": round(pika_median) if pika_median else None,
                "ratio": round(ratio, 2) if ratio else None,
                "ours_trials": [round(r) for r in our_rates],
                "aio_pika_trials": [round(r) for r in pika_rates],
                "messages": args.messages,
                "aio_pika_messages": args.aiopika_messages,
                "window": args.window,
                "prefetch": args.prefetch,
                "size": args.size,
            }
        )
    )


if __name__ == "__main__":
    main()
