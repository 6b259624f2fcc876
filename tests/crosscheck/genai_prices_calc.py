"""Prices usage objects with the genai-prices calculator, for the quote's
cross-check (tests/tests/crosscheck.rs).

Reads JSON lines {"model", "at", "usage", "price_context"} on stdin, where
`usage` is an Anthropic Messages API usage object; writes one line per input:
the total in USD as an exact decimal string, or "error: ..." when
genai-prices cannot price it.
"""

import datetime
import json
import sys

import genai_prices


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        try:
            extracted = genai_prices.extract_usage(
                {"model": req["model"], "usage": req["usage"]}, provider_id="anthropic"
            )
            at = datetime.datetime.fromisoformat(req["at"].replace("Z", "+00:00"))
            price = extracted.calc_price(
                genai_request_timestamp=at, price_context=req.get("price_context") or None
            )
            print(str(price.total_price))
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            print(f"error: {e}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
