#!/usr/bin/env python3
"""Write the seed corpora of owrun's fuzz targets (tests/fixtures/fuzz/<target>/) from the real
fixtures: the fuzzers mutate these, so each is a real header, kept small (mutants are cut at
64 KB).

    python3 scripts/make_fuzz_seeds.py        # standard library only

  gguf/         the llama, qwen2, gemma2 and phi3 fixtures' metadata and tensor tables as written,
                their tensors shrunk to zeros (the token embedding keeps its rows, so the vocabulary
                still fits it)
  safetensors/  the tiny llama's header (names, types, offsets) with 2x2 tensors, plus one of
                every other type owrun meets (F16, BF16, I32, F8_E4M3) and a __metadata__ entry
  config/       every fixture's config.json and generation_config.json
  template/     every fixture's chat template, alone and inside a tokenizer_config.json
  request/      OpenAI request bodies as clients send them: chat with tools, tool_choice and
                history, json_schema, logprobs, streaming options, completions with token ids
"""

import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "fuzz"

# GGUF value types and their fixed sizes (strings and arrays are read specially).
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Reader:
    def __init__(self, b):
        self.b, self.pos = b, 0

    def take(self, n):
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def value(self, ty):
        """The value's bytes as written (type tag excluded)."""
        start = self.pos
        if ty == 8:
            self.take(self.u64())
        elif ty == 9:
            elem, n = self.u32(), self.u64()
            for _ in range(n):
                self.value(elem)
        else:
            self.take(FIXED[ty])
        return self.b[start:self.pos]


def shrink_gguf(src, dst):
    r = Reader(src.read_bytes())
    assert r.take(4) == b"GGUF"
    version, n_tensors, n_kv = r.u32(), r.u64(), r.u64()
    kvs = []
    for _ in range(n_kv):
        key = r.take(r.u64())
        ty = r.u32()
        kvs.append((key, ty, r.value(ty)))
    tensors = []
    for _ in range(n_tensors):
        name = r.take(r.u64())
        dims = [r.u64() for _ in range(r.u32())]
        r.u32(), r.u64()  # type, offset: replaced below
        tensors.append((name, dims))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv))
    for key, ty, raw in kvs:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", ty) + raw
    data, offset = [], 0
    for name, dims in tensors:
        if name == b"token_embd.weight":
            ty, new_dims = 2, dims  # Q4_0, zeros
            blob = bytes(dims[1] * dims[0] // 32 * 18)
        else:
            # F32 ones (a rope factor of 0 is refused before anything else is read); vectors
            # keep their length, matrices become a row of 32.
            ty, new_dims = 0, dims if len(dims) == 1 else [32]
            blob = struct.pack("<f", 1.0) * new_dims[0]
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(new_dims))
        out += b"".join(struct.pack("<Q", d) for d in new_dims)
        out += struct.pack("<IQ", ty, offset)
        blob += bytes(-len(blob) % 32)
        data.append(blob)
        offset += len(blob)
    out += b"\0" * (-len(out) % 32)
    for blob in data:
        out += blob
    dst.write_bytes(bytes(out))


def safetensors(tensors, metadata):
    header, blobs, at = {"__metadata__": metadata}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        blobs += raw
        at += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blobs


def main():
    shutil.rmtree(OUT / "gguf", ignore_errors=True)
    shutil.rmtree(OUT / "safetensors", ignore_errors=True)
    shutil.rmtree(OUT / "config", ignore_errors=True)
    shutil.rmtree(OUT / "template", ignore_errors=True)
    for d in ("gguf", "safetensors", "config", "template"):
        (OUT / d).mkdir(parents=True)

    for fam in ("llama", "qwen2", "gemma2", "phi3"):
        shrink_gguf(FIX / "gguf" / f"{fam}.gguf", OUT / "gguf" / f"{fam}.gguf")

    b = (FIX / "models" / "llama" / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    names = sorted(k for k in json.loads(b[8:8 + n]) if k != "__metadata__")
    zeros = bytes(16)
    tensors = [(name, "F32", [2, 2], zeros) for name in names]
    (OUT / "safetensors" / "llama.safetensors").write_bytes(safetensors(tensors, {"format": "pt"}))
    others = [("f16", "F16", [2, 2], bytes(8)), ("bf16", "BF16", [4], bytes(8)),
              ("i32", "I32", [2], bytes(8)), ("f8", "F8_E4M3", [3], bytes(3))]
    (OUT / "safetensors" / "types.safetensors").write_bytes(safetensors(others, {}))

    for d in sorted((FIX / "models").iterdir()):
        for f in ("config.json", "generation_config.json"):
            if (d / f).exists():
                shutil.copy(d / f, OUT / "config" / f"{d.name}.{f}")
        jinja = d / "chat_template.jinja"
        if jinja.exists():
            source = jinja.read_text()
            (OUT / "template" / f"{d.name}.jinja").write_text(source)
            tc = json.loads((d / "tokenizer_config.json").read_text())
            tc["chat_template"] = source
            (OUT / "template" / f"{d.name}.tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    shutil.rmtree(OUT / "request", ignore_errors=True)
    (OUT / "request").mkdir()
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                              "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}
    requests = {
        "chat_tools": {"model": "stories260k", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}],
            "tools": [weather], "tool_choice": "auto", "temperature": 0.7, "max_tokens": 64},
        "chat_required": {"model": "stories260k", "messages": [{"role": "user", "content": "Weather?"}],
                          "tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        "chat_schema": {"model": "stories260k", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "A person"}]}], "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "strict": True, "schema": {"type": "object", "properties": {
                "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                "required": ["name", "age"], "additionalProperties": False}}}, "seed": 7},
        "chat_stream": {"model": "stories260k", "messages": [{"role": "user", "content": "Once"}], "stream": True,
                        "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 5,
                        "n": 2, "stop": ["\n", "The end"], "top_p": 0.9, "presence_penalty": 0.5},
        "completion_ids": {"model": "stories260k", "prompt": [1, 403, 407, 261], "max_tokens": 16,
                           "logprobs": 3, "echo": False, "frequency_penalty": 0.2},
        "completion_text": {"model": "stories260k", "prompt": "Once upon a time", "stream": True,
                            "response_format": {"type": "json_object"}, "max_completion_tokens": 8},
    }
    for name, body in requests.items():
        (OUT / "request" / f"{name}.json").write_text(json.dumps(body, indent=1))
    for d in sorted(OUT.iterdir()):
        print(d.name, len(list(d.iterdir())), "seeds,", sum(f.stat().st_size for f in d.iterdir()), "bytes")


if __name__ == "__main__":
    main()
