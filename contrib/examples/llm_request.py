#!/usr/bin/env python3
"""An LLM request's lifecycle, as the LLM service of the original system
reported it: request start (model, provider, priority), a retry after a
rate limit, streaming start and progress with token counts, completion
with timing and token usage, and an error when every attempt fails.

    python3 contrib/examples/llm_request.py --url http://127.0.0.1:4000 [--fail]
"""

import random
import time

from _common import arguments, finish, statusgw


class RateLimited(Exception):
    pass


def call_model(attempt, fail, speed):
    """A stand-in for the provider's API: rate limited on the first attempt."""
    time.sleep(0.2 / speed)
    if attempt == 1 or fail:
        raise RateLimited("429 from provider: rate limit exceeded")
    return ["Hello", ",", " here", " is", " the", " answer", "."] * 6


def completion(status, conv, model, provider, fail=False, speed=1.0, max_attempts=3):
    llm = lambda **extra: statusgw.build_llm_metadata(model, provider, extra)  # noqa: E731
    started = time.monotonic()
    status.engine(conv, "LLM request started: %s" % model, llm(priority="normal", max_attempts=max_attempts))
    for attempt in range(1, max_attempts + 1):
        try:
            tokens = call_model(attempt, fail, speed)
            break
        except RateLimited as e:
            if attempt == max_attempts:
                status.error(conv, "LLM request failed after %d attempts" % attempt, statusgw.build_error_metadata(
                    "rate_limited", str(e), llm(attempts=attempt)))
                status.with_timing(conv, "engine", "LLM request gave up", started, llm(outcome="error"))
                return None
            delay = 0.3 * attempt / speed
            status.engine(conv, "Retrying LLM request (attempt %d of %d)" % (attempt + 1, max_attempts),
                          llm(attempt=attempt + 1, error=str(e), retry_in_ms=int(delay * 1000)))
            time.sleep(delay)

    status.engine(conv, "Streaming response", llm(stream=True))
    received = []
    for i, tok in enumerate(tokens, 1):
        received.append(tok)
        time.sleep(random.uniform(0.005, 0.02) / speed)
        if i % 10 == 0:
            status.progress_percentage(conv, "Streaming tokens", i, len(tokens), llm(tokens_received=i))
    prompt_tokens, completion_tokens = 182, len(received)
    status.with_timing(conv, "engine", "LLM request complete", started, llm(
        stream=True, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens, finish_reason="stop"))
    return "".join(received)


def main():
    args = arguments(__doc__.split("\n\n")[0], fail=(bool, False, "every attempt fails (the error path)"))
    status = statusgw.Client(args.url, api_key=args.key, source="llm-service")
    text = completion(status, args.conversation, "gpt-4", "openai", fail=args.fail, speed=args.speed)
    print("answer:", text if text else "(failed)")
    return finish(status)


if __name__ == "__main__":
    raise SystemExit(main())
