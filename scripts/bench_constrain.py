"""Constrained decoding's cost in `owrun serve`: tokens/s of free and constrained requests, and
how long a constrained request holds up another client (standard library only).

    python3 scripts/bench_constrain.py --model FILE.gguf --bin new=target/release/owrun \
        [--bin old=/path/to/owrun] [--rounds 3] [--threads 2] [--only free,tool,...] \
        [--schema5m-tokens 8]

Each round starts every binary in turn (the order alternates per round: timings on a shared
machine drift) and runs, one request at a time, non-streaming, temperature 0:

  free        a chat question, tools offered (tool_choice auto), unconstrained
  tool        the same request with tool_choice required: get_weather(city) held to its schema
  plain       the schema requests' prompt and token limit (24), unconstrained
  schema30k   response_format json_schema with a 30 KB schema (130 properties)
  schema5m    the same with a 5 MB schema (22,000 properties)
  stall       `free` while a `schema30k` request runs beside it (--parallel 2): how much the
              constrained one holds the model thread up for the other client
  stall5m     the same beside a `schema5m` request
  pair        `free` beside an unconstrained request: what the stalls are to be compared with

The old recognizer needs minutes per token with the 5 MB schema: --schema5m-tokens 1 for it.

A constrained request comes first, untimed in the table: it builds the vocabulary's token texts
(once per model). Prints one line per request (tokens, seconds, tokens/s = completion tokens over the wall time,
prefill included) and the median per binary and scenario.
"""

import argparse
import http.client
import json
import statistics
import subprocess
import threading
import time

PORT = 18517
PROMPT = "What is the weather like in Paris today? Use the tool."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]


def big_schema(n):
    """An object of n properties, each a small object (about 230 bytes of JSON each)."""
    props = {
        f"property_{i}": {
            "type": "object",
            "properties": {
                "unit": {"enum": ["celsius", "fahrenheit", "kelvin"]},
                "value": {"type": "number"},
                "note": {"type": "string", "description": "a note, as long as needed"},
            },
            "required": ["unit"],
        }
        for i in range(n)
    }
    return {"type": "object", "properties": props}


def request(body, timeout=3600):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    wall = time.perf_counter() - started
    if resp.status != 200:
        return {"error": resp.status, "body": data[:300].decode("utf-8", "replace")}
    out = json.loads(data)
    msg = out["choices"][0]["message"]
    text = msg.get("content") or json.dumps(msg.get("tool_calls"))
    return {"tokens": out["usage"]["completion_tokens"], "s": wall, "text": text[:120]}


def bodies(model, tokens_5m):
    base = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0, "seed": 1}
    free = dict(base, tools=TOOLS, tool_choice="auto", max_tokens=40)
    tool = dict(base, tools=TOOLS, tool_choice="required", max_tokens=40)

    def schema(n, tokens):
        return dict(base, max_tokens=tokens, response_format={
            "type": "json_schema", "json_schema": {"name": "big", "schema": big_schema(n)}})

    return {"free": free, "tool": tool, "plain": dict(base, max_tokens=24),
            "schema30k": schema(130, 24),
            "schema5m": schema(22_000, tokens_5m), "side": dict(free, max_tokens=24)}


def wait_ready(proc):
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            conn.request("GET", "/v1/models")
            resp = conn.getresponse()
            loaded = [m["id"] for m in json.loads(resp.read())["data"] if m.get("loaded")]
            if resp.status == 200 and loaded:
                # The file's id as the server lists it (the registry's models are listed too).
                return loaded[0]
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server never became ready")


def run_binary(label, binary, args, results):
    proc = subprocess.Popen(
        [binary, "serve", args.model, "--port", str(PORT), "--parallel", "2",
         "--threads", str(args.threads), "--keep-alive", "-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        model = wait_ready(proc)
        b = bodies(model, args.schema5m_tokens)
        request(b["free"])  # warm up
        # The first constrained request makes the vocabulary's texts (once per model, off the
        # model thread): timed apart, as `first`.
        r = request(b["tool"])
        print(f"{label:4} first     {r['tokens']:3} tokens {r['s']:7.2f} s", flush=True)
        for name in args.only:
            if name in ("stall", "stall5m", "pair"):
                side = b[{"stall": "schema30k", "stall5m": "schema5m", "pair": "side"}[name]]
                t = threading.Thread(target=request, args=(side,))
                t.start()
                time.sleep(0.5)
                r = request(b["free"])
                t.join()
            else:
                r = request(b[name])
            if "error" in r:
                print(f"{label:4} {name:9} error {r['error']}: {r['body']}", flush=True)
                continue
            rate = r["tokens"] / r["s"]
            results.setdefault((label, name), []).append(rate)
            print(f"{label:4} {name:9} {r['tokens']:3} tokens {r['s']:7.2f} s {rate:6.2f} tok/s"
                  f"  {r['text']!r}", flush=True)
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="free,tool,plain,schema30k,schema5m,stall,stall5m,pair")
    ap.add_argument("--schema5m-tokens", type=int, default=8)
    args = ap.parse_args()
    args.only = args.only.split(",")
    bins = [b.split("=", 1) for b in args.bin]
    results = {}
    for r in range(args.rounds):
        for label, binary in bins if r % 2 == 0 else bins[::-1]:
            run_binary(label, binary, args, results)
    print("\nmedian tok/s")
    for (label, name), rates in sorted(results.items(), key=lambda x: (x[0][1], x[0][0])):
        print(f"{label:4} {name:9} {statistics.median(rates):6.2f}  ({len(rates)} runs)")


if __name__ == "__main__":
    main()
