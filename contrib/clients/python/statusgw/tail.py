"""Following conversations over Server-Sent Events, resuming across
reconnects from the last event's id."""

import asyncio
import collections
import http.client
import ssl
import json
import time
import urllib.parse

from .core import log

Event = collections.namedtuple("Event", "type data id")
Event.__doc__ = """type: "status_update" or "gap"; data: the decoded JSON; id: the stream position"""


def _events(lines):
    """(event, data, id) of each SSE block in an iterator of text lines."""
    event, data, eid = "message", [], None
    for line in lines:
        if line == "":
            if data or eid is not None:
                yield event, "\n".join(data), eid
            event, data, eid = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                eid = value


def _target(url, conversations, categories, token):
    """(the split URL, the request path) of the multi-conversation stream."""
    if not isinstance(conversations, str):
        conversations = ",".join(conversations)
    query = {"conversations": conversations}
    if categories:
        query["categories"] = ",".join(categories)
    if token:
        query["token"] = token
    u = urllib.parse.urlsplit(url.rstrip("/"))
    return u, u.path + "/api/v1/events?" + urllib.parse.urlencode(query, safe=",*")


def tail(url, conversations, categories=None, token=None, last_event_id=None,
         reconnect_s=1.0, read_timeout_s=60.0):
    """Yield an Event for every update (and every gap) of the conversations
    (a list of ids, or "*" with an admin token), for as long as the caller
    iterates. A dropped connection is reopened after reconnect_s with the
    last event's id, so nothing is missed or seen twice while history holds
    it; when it does not, a "gap" event says what was missed.

        for ev in statusgw.tail("http://127.0.0.1:4000", ["conv-123"]):
            print(ev.data["seq"], ev.data["text"])
    """
    u, path = _target(url, conversations, categories, token)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    position = last_event_id
    while True:
        conn = cls(u.hostname, u.port, timeout=read_timeout_s)
        try:
            headers = {"Accept": "text/event-stream"}
            if position:
                headers["Last-Event-ID"] = position
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            if r.status != 200:
                body = r.read()
                if 400 <= r.status < 500 and r.status != 429:
                    raise ValueError("statusgw tail: %d %s" % (r.status, body.decode("utf-8", "replace")))
                raise OSError("gateway answered %d" % r.status)
            lines = (raw.decode("utf-8").rstrip("\r\n") for raw in r)
            for event, data, eid in _events(lines):
                if eid:
                    position = eid
                if event in ("status_update", "gap"):
                    yield Event(event, json.loads(data), eid)
        except (OSError, http.client.HTTPException) as e:
            log.info("statusgw: tail reconnecting: error=%s", e)
        finally:
            conn.close()
        time.sleep(reconnect_s)


async def atail(url, conversations, categories=None, token=None, last_event_id=None,
                reconnect_s=1.0, read_timeout_s=60.0):
    """tail() for asyncio code: an async generator of the same Events.

        async for ev in statusgw.atail("http://127.0.0.1:4000", ["conv-123"]):
            print(ev.data["text"])
    """
    u, path = _target(url, conversations, categories, token)
    port = u.port or (443 if u.scheme == "https" else 80)
    tls = ssl.create_default_context() if u.scheme == "https" else None
    position = last_event_id
    while True:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, port, ssl=tls), read_timeout_s)
            head = "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n" % (path, u.hostname, port)
            if position:
                head += "Last-Event-ID: %s\r\n" % position
            writer.write((head + "\r\n").encode("latin-1"))
            status = int((await asyncio.wait_for(reader.readline(), read_timeout_s)).split()[1])
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # the headers
            if status != 200:
                body = await asyncio.wait_for(reader.read(4096), read_timeout_s)
                if 400 <= status < 500 and status != 429:
                    raise ValueError("statusgw atail: %d %s" % (status, body.decode("utf-8", "replace")))
                raise OSError("gateway answered %d" % status)

            async def lines():
                while True:
                    raw = await asyncio.wait_for(reader.readline(), read_timeout_s)
                    if not raw:
                        return
                    yield raw.decode("utf-8").rstrip("\r\n")

            async for event, data, eid in _aevents(lines()):
                if eid:
                    position = eid
                if event in ("status_update", "gap"):
                    yield Event(event, json.loads(data), eid)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError) as e:
            log.info("statusgw: tail reconnecting: error=%s", e)
        finally:
            if writer:
                writer.close()
        await asyncio.sleep(reconnect_s)


async def _aevents(lines):
    """_events() over an async iterator of lines."""
    block = []
    async for line in lines:
        block.append(line)
        if line == "":
            for ev in _events(block):
                yield ev
            block = []
