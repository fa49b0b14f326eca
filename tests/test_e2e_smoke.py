from __future__ import annotations


def test_text_completion_through_anthropic(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    reply = client.chat.completions.create(model="claude-sonnet-4", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content
    assert upstream.last().path == "/v1/messages"


def test_stream_through_anthropic(client, upstream):
    upstream.reply_fixture("anthropic", "stream_tool_use.sse")
    chunks = list(client.chat.completions.create(model="claude-sonnet-4", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 520
