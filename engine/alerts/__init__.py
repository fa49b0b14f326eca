"""Alerts: events operators act on (budgets, breakers, upstream credentials, audit spills) sent to webhooks.

`events` builds the events (plain values, no secrets, no prompt text); `formats` renders a body
(plain JSON or Slack-compatible); `sink` queues, deduplicates, signs and delivers them from one
background task, off the request path; `config` reads `alerts.*` settings. Like engine/metrics.py
this layer sits below accounts and pipeline, which emit into it; it imports none of them.
"""
