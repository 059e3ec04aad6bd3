"""Following conversations over Server-Sent Events, resuming across
reconnects from the last event's id."""

import collections
import http.client
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
    if not isinstance(conversations, str):
        conversations = ",".join(conversations)
    query = {"conversations": conversations}
    if categories:
        query["categories"] = ",".join(categories)
    if token:
        query["token"] = token
    u = urllib.parse.urlsplit(url.rstrip("/"))
    path = u.path + "/api/v1/events?" + urllib.parse.urlencode(query, safe=",*")
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
