"""Who may spend what: API keys, users, budgets, rate limits, the response cache and the audit log."""
