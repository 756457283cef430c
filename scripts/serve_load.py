"""Load an OpenAI-compatible server with N concurrent streaming clients (standard library only).

    python3 scripts/serve_load.py --url http://127.0.0.1:11435 --model NAME --clients 16 \
        --tokens 64 [--prompt "Once upon a time"]

Each client sends one streaming /v1/completions request for --tokens tokens. Prints one JSON
line: aggregate decode tokens/s (all tokens generated over the wall time from the first request
to the last token), mean and max time to first token, tokens per client. Used by
scripts/bench_serve.sh to compare owrun serve with llama-server on the same machine.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def client(url, model, prompt, tokens, seed, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0.8,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
            # llama-server stops at EOS otherwise; owrun ignores the unknown field. With random
            # weights an end-of-sequence token is rare for both.
            "ignore_eos": True,
        }
    )
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out.append({"error": resp.status, "body": resp.read()[:300].decode("utf-8", "replace")})
        return
    first = None
    count = 0
    usage = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            if choice.get("text"):
                count += 1
                if first is None:
                    first = time.perf_counter() - started
    out.append({"ttft": first, "tokens": usage or count, "end": time.perf_counter()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Once upon a time")
    args = ap.parse_args()
    results = []
    threads = [
        threading.Thread(
            target=client,
            args=(args.url, args.model, args.prompt, args.tokens, 1000 + i, results),
        )
        for i in range(args.clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    wall = max(r["end"] for r in ok) - start if ok else float("nan")
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    print(
        json.dumps(
            {
                "clients": args.clients,
                "tokens": tokens,
                "wall_s": round(wall, 3),
                "aggregate_tok_s": round(tokens / wall, 2) if ok else None,
                "ttft_mean_s": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
                "ttft_max_s": round(max(ttfts), 3) if ttfts else None,
                "errors": errors[:3],
            }
        )
    )


if __name__ == "__main__":
    main()
