"""The official `openai` package against `tinylm serve` (README, "Serve").

    pip install openai
    tinylm serve --checkpoint runs/default-... --port 8080 [--api-key KEY] &
    python3 examples/openai_client.py [http://127.0.0.1:8080/v1] [KEY]

Streams a completion and a chat reply, then prints the non-streamed chat reply with
its usage.
"""

import sys

from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
api_key = sys.argv[2] if len(sys.argv) > 2 else "none"
client = OpenAI(base_url=base_url, api_key=api_key)

model = client.models.list().data[0].id
print(f"model: {model}")

print("--- completion, streamed ---")
print("春眠不觉晓，", end="", flush=True)
for chunk in client.completions.create(
    model=model, prompt="春眠不觉晓，", max_tokens=60, temperature=0.8, seed=1, stream=True
):
    print(chunk.choices[0].text, end="", flush=True)
print()

print("--- chat, streamed ---")
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "静夜思"}],
    max_tokens=120,
    temperature=0.8,
    seed=2,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[usage: {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens]")

print("--- chat, whole ---")
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "春晓"}],
    max_tokens=120,
    temperature=0.8,
    seed=3,
    extra_body={"top_k": 40},
)
print(reply.choices[0].message.content)
print(f"[finish: {reply.choices[0].finish_reason}; usage: {reply.usage}]")
