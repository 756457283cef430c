"""The real `openai` Python client against `owrun serve stories260k` (run by tests/serve.rs).

OPENAI_BASE_URL and OPENAI_API_KEY point the client at the server; EXPECTED holds stories260K's
greedy generations recorded with transformers.
"""

import json
import os
import sys

import openai
from openai import OpenAI

client = OpenAI(max_retries=0, timeout=60)
expected = json.loads(os.environ["EXPECTED"])
MODEL = "stories260k"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


# Non-streaming chat: the greedy story, with usage.
first = expected[0]
r = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": first["prompt"]}],
    max_tokens=40,
    temperature=0,
)
check(r.choices[0].message.content == first["continuation"], f"chat text: {r}")
check(r.choices[0].finish_reason == "length", "finish_reason length")
check(r.usage.completion_tokens == 40, "usage.completion_tokens")
check(r.usage.prompt_tokens == len(first["prompt_ids"]), "usage.prompt_tokens")

# Streaming chat: the same text, one id, role first, finish last, usage chunk.
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": first["prompt"]}],
    max_tokens=40,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
check(len({c.id for c in chunks}) == 1, "one id per stream")
check(chunks[0].choices[0].delta.role == "assistant", "role in the first delta")
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == first["continuation"], f"streamed text {text!r}")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
check(finishes[-1] == "length" and all(f is None for f in finishes[:-1]), "finish last")
check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40, "usage chunk")

# Legacy completions, streaming and not.
r = client.completions.create(model=MODEL, prompt=first["prompt"], max_tokens=40, temperature=0)
check(r.choices[0].text == first["continuation"], "completion text")
parts = client.completions.create(
    model=MODEL, prompt=first["prompt"], max_tokens=40, temperature=0, stream=True
)
check("".join(p.choices[0].text for p in parts) == first["continuation"], "streamed completion")

# Stop strings: cut before the stop, finish_reason stop.
r = client.completions.create(
    model=MODEL, prompt=first["prompt"], max_tokens=40, temperature=0, stop=["Lily"]
)
cut = first["continuation"].split("Lily")[0]
check(r.choices[0].text == cut and r.choices[0].finish_reason == "stop", f"stop: {r}")

# n=2 with a seed: two choices, repeatable.
TWO_CHOICES = dict(
    model=MODEL,
    messages=[{"role": "user", "content": "Once upon a time"}],
    n=2,
    max_tokens=20,
    temperature=1.0,
    seed=42,
)


def two():
    r = client.chat.completions.create(**TWO_CHOICES)
    return [c.message.content for c in r.choices]


a, b = two(), two()
check(a == b, "same seed, same choices")
check(len(a) == 2 and a[0] != a[1], f"two different choices: {a}")

# Streaming n=2: every delta carries its choice's index.
stream = client.chat.completions.create(**TWO_CHOICES, stream=True)
texts = ["", ""]
for c in stream:
    for ch in c.choices:
        texts[ch.index] += ch.delta.content or ""
check(texts == a, f"streamed choices {texts} != {a}")

# Logprobs.
r = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Once upon a time"}],
    max_tokens=5,
    temperature=0,
    logprobs=True,
    top_logprobs=3,
)
lp = r.choices[0].logprobs.content
check(len(lp) == 5 and all(len(t.top_logprobs) == 3 for t in lp), "logprobs shape")
check(all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in lp), "logprob values")

# Errors arrive as the client's exception classes.
try:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5
    )
    check(False, "temperature 5 accepted")
except openai.BadRequestError as e:
    check(e.body["param"] == "temperature", f"param {e.body}")
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model accepted")
except openai.NotFoundError:
    pass
try:
    OpenAI(api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError:
    pass

# Structured output: the answer parses and follows the schema.
r = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Once upon a time"}],
    max_tokens=100,
    temperature=0,
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "kid",
            "schema": {
                "type": "object",
                "properties": {"happy": {"type": "boolean"}, "age": {"type": "integer"}},
                "required": ["happy", "age"],
            },
        },
    },
)
doc = json.loads(r.choices[0].message.content)
check(isinstance(doc["happy"], bool) and isinstance(doc["age"], int), f"schema: {doc}")
try:
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}},
    )
    check(False, "invalid schema accepted")
except openai.BadRequestError as e:
    check("unknown type" in e.body["message"], f"schema error {e.body}")

# Tools: a named function is called, with arguments of its schema; streamed with an index.
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                "required": ["city"],
            },
        },
    }
]
r = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Weather in Oslo?"}],
    max_tokens=120,
    temperature=0,
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
call = r.choices[0].message.tool_calls[0]
check(r.choices[0].finish_reason == "tool_calls", f"finish {r}")
check(call.function.name == "get_weather", f"call {call}")
check(json.loads(call.function.arguments)["city"] in ("Paris", "Oslo"), f"arguments {call}")
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Weather in Oslo?"}],
    max_tokens=120,
    temperature=0,
    tools=tools,
    tool_choice="required",
    stream=True,
)
deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
check(deltas and all(d.index == 0 for d in deltas), f"tool call deltas {deltas}")
check(deltas[0].function.name == "get_weather", "streamed call name")

# Models, with their licenses.
models = {m.id: m for m in client.models.list()}
check(MODEL in models, "stories260k listed")
card = models[MODEL].model_dump()
check(card["license"] == "mit" and card["pulled"] is True, f"card {card}")

print("all checks passed")
