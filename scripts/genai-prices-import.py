"""The genai-prices catalogue (PyPI `genai-prices`, pinned in
tests/crosscheck/requirements.txt) as a reviewable diff against a running
billing API, and its application by an admin.

    genai-prices-import.py diff  --api URL --key ADMIN_KEY [--plan plan.json] [--effective-from TIME]
    genai-prices-import.py apply plan.json --api URL --key ADMIN_KEY

`diff` reads our catalogue (GET /api/models, GET /api/pricing) and the
Anthropic models of genai-prices, prints what differs and writes a plan: a
JSON list of actions, each the body of one admin API call
(`add_model` -> POST /api/models, `add_version` -> POST /api/pricing,
`add_alias` -> POST /api/models/aliases), with a `why` for the reviewer.
History is never rewritten: a price that differs from ours in the past is
reported, and the plan proposes the catalogue's current price as a new
version from `--effective-from` (default: the next midnight UTC), or from
the catalogue's own start date when that is later. Modifiers the catalogue
does not have (data residency; batch on some older models) are kept from
our version and listed with `=`.
Values the catalogue lacks (a new model's output limit) are filled with the
family's usual figure and marked in `why`: review them before applying.

`apply` sends the plan's actions in order with the admin key and stops at
the first refusal, printing the API's problem (it names the field).

Prices: genai-prices gives USD per million tokens (Decimal); ours are
micro-USD per million tokens (integers), so a price converts exactly or is
reported as not representable.
"""

import argparse
import datetime as dt
import json
import sys
import urllib.error
import urllib.request
from decimal import Decimal

from genai_prices import __version__ as GENAI_VERSION
from genai_prices.data import providers
from genai_prices.types import TieredPrices

CLASSES = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_write_5m": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
    "cache_read": "cache_read_mtok",
}
# Price contexts of genai-prices and the modifier each is, in our rules.
VARIANTS = [({"processing": "batch"}, ("service_tier", "batch")), ({"speed": "fast"}, ("speed", "fast"))]
# Output limits by family, when a new model's is not in the catalogue.
OUTPUT_LIMITS = {"opus": 128000, "fable": 128000, "mythos": 128000, "sonnet": 64000, "haiku": 64000}


def api(base, key, method, path, body=None):
    req = urllib.request.Request(
        base.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def micros(usd_per_mtok, what):
    """USD per million tokens -> micro-USD per million, exactly."""
    m = Decimal(usd_per_mtok) * 1_000_000
    if m != m.to_integral_value() or m < 0:
        raise ValueError(f"{what}: {usd_per_mtok} USD/M is not a whole number of micro-USD")
    return int(m)


def base_and_tier(price):
    if isinstance(price, TieredPrices):
        return price.base, [(t.start, t.price) for t in price.tiers]
    return price, []


def version_of(info, at):
    """The catalogue's version of `info` at `at`, in our shape, or raises."""
    standard = info.get_prices(at)
    prices, tiers = {}, {}
    for ours, theirs in CLASSES.items():
        value = getattr(standard, theirs, None)
        if value is None and ours == "cache_write_1h":
            # Anthropic: a one-hour write costs twice the base input price.
            base_in, tier_in = base_and_tier(standard.input_mtok)
            value = TieredPrices(base=base_in * 2, tiers=[]) if not tier_in else None
            if value is None:
                raise ValueError("no one-hour cache write price")
        if value is None:
            raise ValueError(f"no {theirs}")
        base, steps = base_and_tier(value)
        prices[ours] = micros(base, ours)
        for start, p in steps:
            tiers.setdefault(start, {})[ours] = micros(p, f"{ours} above {start}")
    rules = {}
    if tiers:
        rules["tiers"] = [
            {"above_prompt_tokens": start, "prices": {c: by.get(c, prices[c]) for c in CLASSES}}
            for start, by in sorted(tiers.items())
        ]
    modifiers = []
    for context, (attribute, value) in VARIANTS:
        variant = info.get_prices(at, context)
        if variant.__dict__ == standard.__dict__:
            continue
        ratios = set()
        for theirs in CLASSES.values():
            b, v = getattr(standard, theirs, None), getattr(variant, theirs, None)
            if b is not None and v is not None and base_and_tier(b)[0] != 0:
                ratios.add(base_and_tier(v)[0] / base_and_tier(b)[0])
        if len(ratios) != 1:
            raise ValueError(f"{attribute}={value} is not one multiplier of every rate: {sorted(ratios)}")
        m = ratios.pop().normalize()
        modifiers.append({"attribute": attribute, "value": value, "multiplier": f"{m:f}"})
    if modifiers:
        rules["modifiers"] = modifiers
    return {"prices": prices, "rules": rules}


def modifiers(version):
    return {
        (m["attribute"], m["value"]): str(Decimal(m["multiplier"]).normalize())
        for m in (version.get("rules") or {}).get("modifiers", [])
    }


def same(ours, theirs):
    """Whether our version prices as the catalogue's: the same rates and
    tiers, and the same multiplier for every modifier the catalogue has.
    A modifier only we have is kept, not a difference: the catalogue leaves
    out what it does not model (data residency) and, for older models,
    prices Anthropic publishes (batch on Opus 4.1, Sonnet 4, Haiku 3.5)."""
    if ours is None:
        return False
    tiers = lambda v: [(t["above_prompt_tokens"], sorted(t["prices"].items())) for t in (v.get("rules") or {}).get("tiers", [])]
    rates = lambda v: {c: v["prices"][c] for c in CLASSES}
    mine, catalogue = modifiers(ours), modifiers(theirs)
    return (
        rates(ours) == rates(theirs)
        and tiers(ours) == tiers(theirs)
        and all(mine.get(k) == m for k, m in catalogue.items())
    )


def merged(theirs, ours):
    """The catalogue's version with our modifiers it does not have."""
    out = json.loads(json.dumps(theirs))
    have = modifiers(theirs)
    kept = [m for m in ((ours or {}).get("rules") or {}).get("modifiers", []) if (m["attribute"], m["value"]) not in have]
    if kept:
        out["rules"].setdefault("modifiers", []).extend(kept)
    return out


def kept_note(model, ours, theirs):
    only = sorted(set(modifiers(ours or {})) - set(modifiers(theirs)))
    return f"= {model}: keeps {', '.join(f'{a}={v}' for a, v in only)} (not in genai-prices)" if only else None


def next_midnight():
    today = dt.datetime.now(dt.timezone.utc).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.timezone.utc)


def diff(args):
    anthropic = next(p for p in providers if p.id == "anthropic")
    status, models = api(args.api, args.key, "GET", "/api/models")
    if status != 200:
        sys.exit(f"GET /api/models answered {status}: {models}")
    status, pricing = api(args.api, args.key, "GET", "/api/pricing")
    if status != 200:
        sys.exit(f"GET /api/pricing answered {status}: {pricing}")
    history = {item["model"]: item["history"] for item in pricing["items"]}
    names = {}  # every name we know (own names and aliases) -> our model
    for m in models["items"]:
        names[m["model"]] = m["model"]
        for a in m.get("aliases", []):
            names[a] = m["model"]
    start = dt.datetime.fromisoformat(args.effective_from.replace("Z", "+00:00")) if args.effective_from else next_midnight()
    now = dt.datetime.now(dt.timezone.utc)
    plan, report = [], []

    def ours_at(model, at):
        live = [v for v in history.get(model, []) if dt.datetime.fromisoformat(v["effective_from"].replace("Z", "+00:00")) <= at]
        return live[-1] if live else None

    for info in anthropic.models:
        mine = sorted({names[n] for n in names if info.is_match(n)})
        if len(mine) > 1:
            # Several of ours match (dated ids of one undated name): the exact id only.
            mine = [m for m in mine if m == info.id] or mine
        try:
            # Compared where a proposal would start: what will be in force then.
            theirs_now = version_of(info, max(start, now))
        except ValueError as e:
            report.append(f"  skip {info.id}: {e}")
            continue
        if not mine:
            family = next((f for f in OUTPUT_LIMITS if f in info.id), None)
            if family is None:
                report.append(f"  skip {info.id}: not one of our families ({', '.join(OUTPUT_LIMITS)})")
                continue
            body = {
                "model": info.id, "display_name": info.name or info.id, "provider": "anthropic", "family": family,
                "context_window": info.context_window or 200000, "max_output_tokens": OUTPUT_LIMITS[family],
                "effective_from": start.strftime("%Y-%m-%dT%H:%M:%SZ"), **theirs_now,
            }
            plan.append({"action": "add_model", "body": body,
                         "why": f"genai-prices {GENAI_VERSION} has {info.id}; max_output_tokens {OUTPUT_LIMITS[family]} assumed for the {family} family"
                                + ("" if info.context_window else "; context_window 200000 assumed")})
            report.append(f"+ model {info.id} ({info.name}) from {body['effective_from']}: {theirs_now['prices']}")
            continue
        for model in mine:
            # The catalogue's price changes (past ones only reported), then today's.
            starts = [c.constraint.start_date for c in (info.prices if isinstance(info.prices, list) else []) if c.constraint is not None]
            for d in starts:
                at = dt.datetime.combine(d, dt.time(), dt.timezone.utc)
                ours = ours_at(model, at)
                theirs = version_of(info, at)
                if not same(ours, theirs):
                    if at <= now:
                        report.append(f"! {model}: from {d} genai-prices has {theirs}, ours was {ours and {'prices': ours['prices'], 'rules': ours.get('rules', {})}} (in the past: not rewritten)")
                    else:
                        plan.append({"action": "add_version", "body": {"model": model, "effective_from": at.strftime("%Y-%m-%dT%H:%M:%SZ"), **merged(theirs, ours)},
                                     "why": f"genai-prices {GENAI_VERSION}: a price change dated {d}"})
                        report.append(f"~ {model} from {d}: {theirs['prices']}")
            ours = ours_at(model, max(start, now))
            if ours is not None and kept_note(model, ours, theirs_now):
                report.append(kept_note(model, ours, theirs_now))
            planned = [p for p in plan if p["action"] == "add_version" and p["body"]["model"] == model
                       and p["body"]["effective_from"] <= start.strftime("%Y-%m-%dT%H:%M:%SZ")]
            if not same(ours, theirs_now) and not planned:
                body = {"model": model, "effective_from": start.strftime("%Y-%m-%dT%H:%M:%SZ"), **merged(theirs_now, ours)}
                plan.append({"action": "add_version", "body": body,
                             "why": f"genai-prices {GENAI_VERSION} prices {info.id} differently today; ours: {ours and {'prices': ours['prices'], 'rules': ours.get('rules', {})}}"})
                report.append(f"~ {model} from {body['effective_from']}: {theirs_now} (ours now: {ours and ours['prices']})")
            if info.id != model and info.id not in names and info.is_match(info.id):
                plan.append({"action": "add_alias", "body": {"alias": info.id, "model": model},
                             "why": f"genai-prices names {model} `{info.id}`"})
                names[info.id] = model
                report.append(f"+ alias {info.id} -> {model}")
    print(f"genai-prices {GENAI_VERSION} against {args.api}: {len(plan)} proposed changes")
    print("\n".join(report) if report else "  no differences")
    if args.plan:
        with open(args.plan, "w") as f:
            json.dump(plan, f, indent=2)
        print(f"plan written to {args.plan}: review it, then `apply` it")
    return plan


ENDPOINTS = {"add_model": "/api/models", "add_version": "/api/pricing", "add_alias": "/api/models/aliases"}


def apply(args):
    with open(args.plan) as f:
        plan = json.load(f)
    for i, step in enumerate(plan):
        path = ENDPOINTS.get(step.get("action"))
        if path is None:
            sys.exit(f"step {i}: unknown action {step.get('action')!r}")
        status, body = api(args.api, args.key, "POST", path, step["body"])
        if status != 201:
            sys.exit(f"step {i} ({step['action']} {step['body'].get('model') or step['body'].get('alias')}) refused with {status}: {json.dumps(body)}")
        print(f"applied {i}: {step['action']} {json.dumps(step['body'].get('model') or step['body'].get('alias'))}")
    print(f"{len(plan)} changes applied")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diff")
    d.add_argument("--plan")
    d.add_argument("--effective-from")
    a = sub.add_parser("apply")
    a.add_argument("plan")
    for p in (d, a):
        p.add_argument("--api", required=True)
        p.add_argument("--key", required=True)
    args = parser.parse_args()
    diff(args) if args.command == "diff" else apply(args)


if __name__ == "__main__":
    main()
